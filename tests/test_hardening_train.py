"""Hardening of training (issue 7): an inf gradient, bf16 where it cannot run, an unwritable out_dir, and bad
rows in the captions file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from arf.errors import InputFileError
from arf.images import TooManyBadInputs
from train_fixtures import assert_stopped_at_good_checkpoint, make_benchmark


def _cfg(tmp_path: Path, root: Path, **extra):
    from arf.train import TrainConfig

    fields = {"method": "flyp", "model": "arf:tiny-clip", "data_root": str(root), "out_dir": str(tmp_path / "runs"),
              "batch_size": 8, "max_steps": 6, "checkpoint_every": 2, "lr": 1e-4, "warmup_steps": 2,
              "augment": False, "progress": False, "tensorboard": False, **extra}
    return TrainConfig(**fields)


class _InfGrad(torch.autograd.Function):
    """Identity forward (the loss stays finite), infinite backward: the fault a NaN-loss check cannot see."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def test_inf_gradient_with_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from arf.train import TrainingDiverged, train
    from arf.train.methods import Flyp

    root = make_benchmark(tmp_path / "bench", per_class=4)
    cfg = _cfg(tmp_path, root)
    real = Flyp.losses

    def poisoned(self, module, batch, step, phase):
        out = real(self, module, batch, step, phase)
        if step == 2:  # 0-based: the 3rd step, after the step-2 checkpoint
            out["loss"] = _InfGrad.apply(out["loss"])
        return out

    monkeypatch.setattr(Flyp, "losses", poisoned)
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient norm = (inf|nan) at step 3; stopped before "
                                               r"the update\. Last good checkpoint: .*step_00000002"):
        train(cfg)
    assert_stopped_at_good_checkpoint(cfg.run_dir, "step_00000002")
    logged = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)


def test_bf16_falls_back_to_fp32_when_autocast_is_unavailable(monkeypatch, caplog):
    from arf.train.loop import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("auto", cpu) is None
    if not torch.cuda.is_available():
        # A GPU asked for where there is none (or one without bf16): fp32, not a crash at the first forward.
        assert autocast_dtype("bf16", torch.device("cuda")) is None
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with caplog.at_level(logging.WARNING):
        assert autocast_dtype("bf16", cpu) is None
    assert "precision=bf16: bf16 autocast is not supported on cpu here; training in fp32" in caplog.text


def test_bf16_falls_back_when_the_cpu_kernel_fails(monkeypatch):
    from arf.train.loop import autocast_dtype

    def refuse(*a, **k):
        raise RuntimeError("bf16 not supported on this CPU")

    monkeypatch.setattr(torch, "autocast", refuse)
    assert autocast_dtype("bf16", torch.device("cpu")) is None


def test_training_with_bf16_unavailable_runs_in_fp32(tmp_path, monkeypatch):
    from arf.train import train

    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    root = make_benchmark(tmp_path / "bench", per_class=2)
    run = train(_cfg(tmp_path, root, precision="bf16", max_steps=1, checkpoint_every=0))
    assert (run / "final").is_dir()


@pytest.mark.parametrize("where", ["sysfs", "file_in_the_way"])
def test_unwritable_out_dir_is_one_output_error_line(tmp_path, capsys, where):
    from arf.cli import main

    if where == "sysfs":
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no sysfs here")
        out = "/sys/arf-runs"
    else:
        (tmp_path / "runs").write_text("a file, not a folder")
        out = str(tmp_path / "runs" / "sub")
    root = make_benchmark(tmp_path / "bench", per_class=2)
    rc = main(["train", "--method", "flyp", "--out-dir", out, "--set", f"data_root={root}",
               "--set", "model=arf:tiny-clip", "--set", "max_steps=1", "--set", "progress=false"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("arf: error: cannot create folder ") and out in err[0]


# ---------------------------------------------------------------------------------------------------------------
# captions file: non-UTF-8, empty, duplicate rows


def _captions(root: Path, rows: list[tuple[str, bytes | None]]) -> Path:
    out = root / "captions_bad.parquet"
    pq.write_table(pa.table({"image_id": [r[0] for r in rows], "caption": pa.array([r[1] for r in rows],
                                                                                    pa.binary())}), out)
    return out


def _train_set(root: Path):
    from arf.train.loop import load_train_set

    return load_train_set(_cfg(root.parent, root))


def test_captions_bad_rows_are_counted_and_the_first_caption_wins(tmp_path, caplog):
    from arf.train.data import read_captions

    root = make_benchmark(tmp_path / "bench", per_class=6)
    ds = _train_set(root)
    rows = [(p, f"caption of {p}".encode()) for p in ds.paths]
    rows[0] = (ds.paths[0], b"caf\xe9")  # latin-1, not UTF-8
    rows[1] = (ds.paths[1], b"   ")
    rows.append((ds.paths[2], b"another caption"))  # a second, different caption
    rows.append((ds.paths[3], f"caption of {ds.paths[3]}".encode()))  # an identical repeat: harmless
    with caplog.at_level(logging.WARNING):
        caps = read_captions(_captions(root, rows), ds, max_bad_fraction=0.2)
    assert caps[0] is None and caps[1] is None
    assert caps[2] == f"caption of {ds.paths[2]}" and caps[5] == f"caption of {ds.paths[5]}"
    assert all(isinstance(c, str) and not c.startswith("b'") for c in caps[2:])
    assert "row 1 (caption is not UTF-8 text)" in caplog.text and "row 2 (empty caption)" in caplog.text
    assert "row 25 (a second, different caption for" in caplog.text
    assert "22 ok, 3 skipped" in caplog.text
    with pytest.raises(TooManyBadInputs, match=r"captions .*captions_bad.parquet: \d+ of .* inputs are bad"):
        read_captions(_captions(root, rows), ds)


def test_unreadable_captions_file_is_an_input_error(tmp_path):
    from arf.train.data import read_captions

    root = make_benchmark(tmp_path / "bench", per_class=2)
    bad = root / "captions.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputFileError, match=r"captions file .*captions.parquet: cannot read"):
        read_captions(bad, _train_set(root))


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    import arf.train.checkpoint as ckpt
    from arf.io import OutputError
    from arf.train import train

    root = make_benchmark(tmp_path / "bench", per_class=2)
    cfg = _cfg(tmp_path, root, max_steps=5)
    real = ckpt.torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the step-4 checkpoint's optimizer state
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(OutputError, match=r"disk full"):
        train(cfg)
    kept = ckpt.list_checkpoints(cfg.run_dir)
    assert [p.name for p in kept] == ["step_00000002"]
    assert all(torch.isfinite(t).all() for t in load_file(str(kept[0] / "model.safetensors")).values())
    assert not (cfg.run_dir / "final").exists()
