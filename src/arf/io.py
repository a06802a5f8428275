"""Atomic file writes and checksums: a partial file is never read as complete.

Every stage writes through these helpers (temp file in the same folder, fsync, ``os.replace``), so a kill -9
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from arf.errors import ArfError


class OutputError(ArfError, OSError):
    """The output folder cannot be written (disk full, permission denied); the message names the path."""

    def __str__(self) -> str:
        # OSError would print "[Errno 28] cannot write ..."; the CLI shows the sentence alone (errno stays set).
        return self.strerror or super().__str__()


def ensure_dir(path: str | Path) -> Path:
    """``mkdir -p`` for output folders: an unwritable location is an :class:`OutputError` naming it, not a
    traceback (run dirs, shard folders, caches)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # a file sits where the folder should be
        raise OutputError(errno.EEXIST, f"cannot create folder {path}: a file with that name exists") from e
    except OSError as e:
        why = _REASONS.get(e.errno or 0, e.strerror or str(e))
        raise OutputError(e.errno or 0, f"cannot create folder {path}: {why}") from e
    return path


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any worker threads exist.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed onto ``path``.

    A kill -9 at any moment leaves ``path`` either absent, the old file, or the complete new one; at worst a
    hidden ``.<name>.*.tmp`` file remains beside it, which no reader ever opens. Disk full, a file-size limit or
    permission denied become :class:`OutputError` naming ``path``, and the target is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp creates 0600 files; outputs should get the usual umask permissions, like open() would give.
        os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
    except OSError as e:
        raise _output_error(path, e) from e
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # Again after the body: a writer that replaces the file (safetensors' save_file does) leaves it 0600.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except ArfError:
        # Errors the body raised on purpose (a bad input file, a bad image) keep their own message.
        tmp_path.unlink(missing_ok=True)
        raise
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise _output_error(path, e) from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a power cut right after os.replace could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the data itself is already synced
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open`` for writing, atomically: the file appears under ``path`` only once it is complete."""
    if any(c in mode for c in "rax"):
        # Appending, reading or exclusive-create would act on the fresh empty temp file, not on the target.
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} is not supported (use 'w' or 'wb')")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (file-size limit reached)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a parent of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder",
}


def _output_error(path: Path, e: OSError) -> OutputError:
    why = _REASONS.get(e.errno or 0, e.strerror or str(e))
    return OutputError(e.errno or 0, f"cannot write {path}: {why}")


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(path: str | Path, table: Any) -> None:
    """Write a pyarrow Table atomically."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
