"""Training state on disk: ``checkpoints/step_XXXXXXXX/`` with weights, optimizer, RNG states and the step.

A checkpoint folder is written under a temporary name, every file fsynced, then renamed into place, so a kill -9
at any moment leaves only complete checkpoints (``latest`` = the highest complete step). Weights are
safetensors; the optimizer and RNG states are a ``torch.save`` dict of tensors and numbers, read back with
``weights_only=True``. The data position is the step itself (see :mod:`arf.train.data`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from arf.errors import InputFileError
from arf.io import atomic_open, atomic_path, fsync_dir

WEIGHTS = "model.safetensors"
STATE = "train_state.pt"
META = "train_state.json"
PREFIX = "step_"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a temporary folder of an interrupted write is ignored)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / META).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve(run_dir: Path, resume: str) -> Path:
    """``latest`` or a checkpoint folder -> the folder; an error naming what exists otherwise."""
    if resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise InputFileError(f"--resume latest: no checkpoint in {checkpoint_dir(run_dir)}")
        return found[-1]
    p = Path(resume).expanduser()
    if not (p / META).is_file():
        raise InputFileError(f"--resume {resume}: not a training checkpoint (no {META} in it)")
    return p


def save(run_dir: Path, step: int, module: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
         keep: int) -> Path:
    """Write the checkpoint of ``step`` atomically and keep the ``keep`` newest."""
    root = checkpoint_dir(run_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".{final.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with atomic_path(tmp / WEIGHTS) as p:
        save_model(module, str(p))
    with atomic_path(tmp / STATE) as p:
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state()}, p)
    with atomic_open(tmp / META) as f:
        json.dump({**meta, "step": step}, f, indent=2, sort_keys=True, default=str)
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(ckpt: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimizer and RNG states; returns the checkpoint's metadata (with ``step``)."""
    missing, unexpected = load_model(module, str(ckpt / WEIGHTS), strict=False)
    if missing or unexpected:
        raise InputFileError(f"{ckpt / WEIGHTS} does not match this model/method (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    state = torch.load(ckpt / STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return json.loads((ckpt / META).read_text())
