"""Atomic writes (``arf.io``): kill -9 mid-write, disk full, file-size limits and permission denied.

After any of these the target is either absent or holds its old complete content; never half a file, and the
error names the path and the reason.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from arf.errors import ArfError, InputFileError
from arf.io import (
    OutputError,
    atomic_open,
    atomic_path,
    ensure_dir,
    read_json,
    sha256_bytes,
    sha256_file,
    write_json,
    write_parquet,
)

OLD = b"old complete content\n"


def _visible(folder: Path) -> list[str]:
    """What a reader listing the folder would open (hidden temp files excluded)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------- normal use


def test_atomic_open_writes_complete_file_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with atomic_open(target) as f:
        f.write("hello")
        assert not target.exists(), "the target appears only once the write is complete"
    assert target.read_text() == "hello"
    assert _temps(target.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask, "not mkstemp's 0600"


def test_a_writer_replacing_the_temp_file_still_gives_normal_permissions(tmp_path: Path) -> None:
    """safetensors' save_file writes a new file under the temp name (mode 0600); the target must not keep that."""
    from safetensors.torch import save_file

    target = tmp_path / "w.safetensors"
    with atomic_path(target) as tmp:
        save_file({"x": torch.zeros(2)}, str(tmp))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_exception_in_body_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_bytes(OLD)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target, "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("boom")
    assert target.read_bytes() == OLD and _temps(tmp_path) == []


def test_arf_errors_from_the_body_keep_their_message(tmp_path: Path) -> None:
    # InputFileError is an OSError too; it must not be reported as "cannot write <output>".
    with pytest.raises(InputFileError, match=r"^input\.csv: missing"):
        with atomic_path(tmp_path / "out.parquet"):
            raise InputFileError("input.csv: missing")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["a", "r", "r+", "x", "ab"])
def test_atomic_open_refuses_modes_that_would_lose_data(mode: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not supported"):
        with atomic_open(tmp_path / "f", mode):
            pass


def test_json_parquet_and_hashes(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert read_json(tmp_path / "m.json") == {"a": [1, 2], "b": 1}
    table = pa.table({"path": ["x.png", "y.png"], "label": [0, 1]})
    write_parquet(tmp_path / "t.parquet", table)
    assert pq.read_table(tmp_path / "t.parquet").equals(table)
    data = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob", chunk=1 << 16) == hashlib.sha256(data).hexdigest() == sha256_bytes(data)


# ---------------------------------------------------------------------------------------------- kill -9

WRITER = textwrap.dedent(
    """
    import sys, time
    from arf.io import atomic_open
    target, chunk = sys.argv[1], b"N" * 65536
    with atomic_open(target, "wb") as f:
        print("writing", flush=True)
        while True:  # never finishes on its own: the parent kills it mid-write
            f.write(chunk)
            f.flush()
            time.sleep(0.001)
    """
)


@pytest.mark.parametrize("kill_after_bytes", [0, 1 << 20, 8 << 20])
@pytest.mark.parametrize("had_old_file", [True, False])
def test_sigkill_mid_write_leaves_old_file(tmp_path: Path, kill_after_bytes: int, had_old_file: bool) -> None:
    target = tmp_path / "shard_000.npy"
    if had_old_file:
        target.write_bytes(OLD)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            temps = _temps(tmp_path)
            if temps and temps[0].stat().st_size >= kill_after_bytes:
                break
            time.sleep(0.01)
        else:
            pytest.fail("writer never reached the kill point")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if had_old_file:
        assert target.read_bytes() == OLD, "the old file survives a kill -9 byte for byte"
        assert _visible(tmp_path) == ["shard_000.npy"]
    else:
        assert not target.exists() and _visible(tmp_path) == [], "no partial file named as the target"
    # What is left is a hidden temp file, never opened by a reader; the next successful write replaces the target.
    assert len(_temps(tmp_path)) == 1 and _temps(tmp_path)[0].stat().st_size >= kill_after_bytes
    with atomic_open(target, "wb") as f:
        f.write(b"rerun")
    assert target.read_bytes() == b"rerun"


# ---------------------------------------------------------------------------------------------- disk full, limits


def test_disk_full_on_write_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.safetensors"
    target.write_bytes(OLD)
    with pytest.raises(OutputError) as e:
        with atomic_open(target, "wb") as f:
            f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() raises on a full disk
    assert str(target) in str(e.value) and "disk full" in str(e.value)
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, ArfError)
    assert target.read_bytes() == OLD and _temps(tmp_path) == []


def test_disk_full_on_fsync_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Delayed allocation: ext4/xfs may only report ENOSPC when the data is flushed.
    target = tmp_path / "metrics.json"
    target.write_bytes(OLD)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=r"cannot write .*metrics\.json: disk full"):
        write_json(target, {"step": 1})
    assert target.read_bytes() == OLD and _temps(tmp_path) == []


def test_quota_exceeded(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="disk quota exceeded"):
        with atomic_path(tmp_path / "x"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))


FSIZE_CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    from arf.io import OutputError, atomic_open
    # A real kernel refusal: writes past 256 KiB fail with EFBIG (SIGXFSZ ignored so write() returns the error).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
    try:
        with atomic_open(sys.argv[1], "wb") as f:
            for _ in range(64):
                f.write(b"z" * 65536)
    except OutputError as e:
        print("OUTPUTERROR", e.errno, e)
    """
)


def test_real_file_size_limit_gives_output_error(tmp_path: Path) -> None:
    target = tmp_path / "emb.npy"
    target.write_bytes(OLD)
    out = subprocess.run([sys.executable, "-c", FSIZE_CHILD, str(target)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"OUTPUTERROR {errno.EFBIG}" in out.stdout and str(target) in out.stdout, out.stdout
    assert "file too large" in out.stdout
    assert target.read_bytes() == OLD and _temps(tmp_path) == []


# ---------------------------------------------------------------------------------------------- permissions


def test_permission_denied_creating_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # We run as root, where chmod does not block writes: inject the error the kernel gives a normal user.
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    target = tmp_path / "run" / "config.yaml"
    with pytest.raises(OutputError) as e:
        write_json(target, {})
    assert str(e.value) == f"cannot write {target}: permission denied" and e.value.errno == errno.EACCES


def test_permission_denied_on_rename_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "final.safetensors"
    target.write_bytes(OLD)

    def denied(src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(OutputError, match="permission denied"):
        with atomic_open(target, "wb") as f:
            f.write(b"new weights")
    assert target.read_bytes() == OLD and _temps(tmp_path) == []


def test_real_kernel_refusals(tmp_path: Path) -> None:
    # A parent that is a file: ENOTDIR/EEXIST from the kernel, not a traceback.
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"cannot write .*file/out\.json"):
        write_json(tmp_path / "file" / "out.json", {})
    # sysfs refuses new files even for root: a real EACCES.
    if _sys_refuses():
        with pytest.raises(OutputError, match=r"cannot write /sys/arf-test\.json: (permission denied|read-only)"):
            write_json("/sys/arf-test.json", {})


def _sys_refuses() -> bool:
    try:
        fd, p = tempfile.mkstemp(dir="/sys")
    except OSError:
        return True
    os.close(fd)
    os.unlink(p)
    return False


def test_ensure_dir_errors_name_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ensure_dir(tmp_path / "a" / "b").is_dir() and ensure_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"cannot create folder .*/f: a file with that name exists"):
        ensure_dir(tmp_path / "f")
    with pytest.raises(OutputError, match=r"cannot create folder .*/f/sub: a parent of the path is a file"):
        ensure_dir(tmp_path / "f" / "sub")
    if _sys_refuses():  # real kernel refusal (EPERM/EACCES on sysfs)
        with pytest.raises(OutputError, match=r"cannot create folder /sys/arf-runs/x: (operation not permitted|perm)"):
            ensure_dir("/sys/arf-runs/x")

    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(OutputError, match="permission denied"):
        ensure_dir(tmp_path / "new")
