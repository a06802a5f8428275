"""examples/open_clip_loop.py: ARF's loss in a plain open_clip loop trains a model open_clip loads back."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import open_clip
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from arf.models import create_model, save_checkpoint
from train_fixtures import make_anchors, make_benchmark

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "open_clip_loop.py"


def _example():
    spec = importlib.util.spec_from_file_location("open_clip_loop", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_open_clip_loop_trains_with_anchors_and_open_clip_loads_the_weights(tmp_path):
    root = make_benchmark(tmp_path / "bench")
    make_anchors(root)
    # The task as a folder of class folders (what the example reads), from the benchmark's train set.
    train = tmp_path / "train"
    t = pq.read_table(root / "train.parquet").to_pydict()
    for rel, name in zip(t["path"], t["classname"], strict=True):
        (train / name.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, train / name.replace(" ", "_") / Path(rel).name)
    torch.manual_seed(0)
    ck = save_checkpoint(create_model("arf:tiny-clip"), tmp_path / "base")
    out = tmp_path / "out"
    logged = _example().main(["--model", f"local-dir:{ck}", "--train", str(train), "--anchors", str(root / "anchors"),
                              "--anchor-root", str(root), "--steps", "3", "--batch-size", "4",
                              "--anchor-batch-size", "4", "--lr", "1e-3", "--out", str(out)])
    assert set(logged) == {"clip_loss", "anchor_loss", "loss"}
    assert all(math.isfinite(v) for v in logged.values())
    # The weighted terms sum to the loss that was backpropagated.
    assert math.isclose(logged["loss"], logged["clip_loss"] + logged["anchor_loss"], rel_tol=1e-6)

    before = load_file(str(ck / "open_clip_model.safetensors"))
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{ck}")
    trained = load_file(str(out / "open_clip_model.safetensors"))
    model.load_state_dict(trained)  # strict: every key of the open_clip model, nothing else
    moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], trained[k])]
    assert any(k.startswith("visual.") for k in moved) and any(not k.startswith("visual.") for k in moved)
