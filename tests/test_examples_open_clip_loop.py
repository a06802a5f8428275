"""examples/open_clip_loop.py: ARF's loss in a plain open_clip loop trains a model open_clip loads back."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from arf.images import TooManyBadInputs
from arf.models import create_model, save_checkpoint
from train_fixtures import make_anchors, make_benchmark

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "open_clip_loop.py"


def _example():
    spec = importlib.util.spec_from_file_location("open_clip_loop", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The benchmark's train set as a folder of class folders (what the example reads), its anchors, a tiny base."""
    root = make_benchmark(tmp_path / "bench")
    make_anchors(root)
    train = tmp_path / "train"
    t = pq.read_table(root / "train.parquet").to_pydict()
    for rel, name in zip(t["path"], t["classname"], strict=True):
        (train / name.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, train / name.replace(" ", "_") / Path(rel).name)
    torch.manual_seed(0)
    ck = save_checkpoint(create_model("arf:tiny-clip"), tmp_path / "base")
    return root, train, ck


def _run(tmp_path: Path, root: Path, train: Path, ck: Path, steps: int) -> dict[str, float]:
    torch.manual_seed(0)  # the task shuffle and the anchor draws
    return _example().main(["--model", f"local-dir:{ck}", "--train", str(train), "--anchors", str(root / "anchors"),
                            "--anchor-root", str(root), "--steps", str(steps), "--batch-size", "4",
                            "--anchor-batch-size", "4", "--lr", "1e-3", "--out", str(tmp_path / "out")])


def test_open_clip_loop_trains_with_anchors_and_open_clip_loads_the_weights(tmp_path):
    root, train, ck = _setup(tmp_path)
    out = tmp_path / "out"
    logged = _run(tmp_path, root, train, ck, steps=3)
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


def test_unreadable_images_are_counted_and_skipped_and_too_many_stop_the_run_naming_them(tmp_path, caplog):
    root, train, ck = _setup(tmp_path)
    task = sorted(train.rglob("*.png"))
    assert len(task) == 24
    readable = {p: p.read_bytes() for p in task}
    task[0].write_bytes(b"not an image")
    # One epoch (6 steps of 4 images): the bad one is seen once, 1 of 24 is under the 5% limit.
    with caplog.at_level("WARNING"):
        logged = _run(tmp_path, root, train, ck, steps=6)
    assert all(math.isfinite(v) for v in logged.values())
    assert [r for r in caplog.records if "task images" in r.getMessage() and task[0].name in r.getMessage()]

    for p in task[1:6]:  # 6 of 24 bad: the run's share of bad task images is past 5%
        p.write_bytes(b"not an image")
    with pytest.raises(TooManyBadInputs, match=r"task images .*train"):
        _run(tmp_path, root, train, ck, steps=3)

    # Every anchor unreadable: batches of nothing are skipped, not trained on, and the stream stops once more than
    # half of what it drew was bad, instead of spinning.
    for p, data in readable.items():
        p.write_bytes(data)
    for p in (root / "images" / "pool").glob("*.png"):
        p.write_bytes(b"not an image")
    with pytest.raises(TooManyBadInputs, match="anchor images"):
        _run(tmp_path, root, train, ck, steps=3)
