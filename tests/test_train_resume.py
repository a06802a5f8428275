"""Exact resume after kill -9 of a real ``arf train`` process, and a NaN loss stopping the run cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kill_fixtures import sigkill_when
from train_fixtures import assert_stopped_at_good_checkpoint, make_benchmark

STEPS = 6


def _config(tmp: Path, root: Path, **extra) -> Path:
    cfg = {"method": "flyp", "model": "arf:tiny-clip", "data_root": str(root), "out_dir": str(tmp / "runs"),
           "batch_size": 8, "max_steps": STEPS, "checkpoint_every": 2, "lr": 1e-4, "warmup_steps": 2,
           "augment": True, "progress": False, "tensorboard": False, **extra}
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _arf(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "arf.cli", "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(p: subprocess.Popen) -> None:
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out


def test_kill9_then_resume_latest_is_bit_identical(tmp_path):
    root = make_benchmark(tmp_path / "bench", per_class=4)
    cfg = _config(tmp_path, root)
    full = _arf("--config", str(cfg), "--name", "full")
    killed = _arf("--config", str(cfg), "--name", "killed")
    run = tmp_path / "runs" / "killed"
    sigkill_when(killed, (run / "checkpoints" / "step_00000002").is_dir, what="checkpoint step 2", timeout=240,
                 poll=0.05)
    assert not (run / "final").exists(), "the run finished before it was killed; the test proves nothing"
    _finish(_arf("--config", str(cfg), "--name", "killed", "--resume", "latest"))
    _finish(full)

    a = load_file(str(tmp_path / "runs" / "full" / "final" / "open_clip_model.safetensors"))
    b = load_file(str(run / "final" / "open_clip_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    base = load_file(str(tmp_path / "runs" / "full" / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"))
    assert not torch.equal(base["model.visual.proj"], torch.zeros_like(base["model.visual.proj"]))
    # The metrics of the resumed run are those of the uninterrupted one, one line per step.
    la = [json.loads(x) for x in (tmp_path / "runs" / "full" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert yaml.safe_load((run / "config.yaml").read_text())["method"] == "flyp"


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    from arf.config import load_config
    from arf.train import TrainConfig, TrainingDiverged, train
    from arf.train.methods import Flyp

    root = make_benchmark(tmp_path / "bench", per_class=4)
    cfg = load_config(TrainConfig, _config(tmp_path, root, augment=False), ["name=nan"])
    real = Flyp.losses

    def poisoned(self, module, batch, step, phase):
        out = real(self, module, batch, step, phase)
        if step == 3:  # 0-based: the 4th step
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(Flyp, "losses", poisoned)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss = nan at step 4.*step_00000002"):
        train(cfg)
    assert_stopped_at_good_checkpoint(cfg.run_dir, "step_00000002")
    # The log stops at the last finished step.
    steps = [json.loads(x)["step"] for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
