"""arf.data.loader: bad images are counted, logged and skipped; the run fails only past max_bad_fraction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from arf.data import ImageDataset, LabeledSet, crop_border, make_loader
from arf.images import BadInputCounter, TooManyBadInputs


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.tensor(list(img.resize((4, 4)).getdata()), dtype=torch.float32).T.reshape(3, 4, 4) / 255


def make_images(tmp_path: Path, n_good: int, bad: dict[str, bytes]) -> list[str]:
    paths = []
    for i in range(n_good):
        p = tmp_path / f"good{i}.png"
        Image.new("RGB", (6, 6), (i * 10 % 255, 0, 0)).save(p)
        paths.append(str(p))
    for name, data in bad.items():
        p = tmp_path / name
        p.write_bytes(data)
        paths.append(str(p))
    return paths


def truncated_png(tmp_path: Path) -> bytes:
    p = tmp_path / "full.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(p)
    return p.read_bytes()[:200]


def test_loader_skips_corrupt_truncated_empty_and_missing(tmp_path, caplog):
    bad = {"corrupt.png": b"\x89PNG not really", "empty.jpg": b"", "trunc.png": truncated_png(tmp_path)}
    paths = [*make_images(tmp_path, 30, bad), str(tmp_path / "missing.png")]
    labels = list(range(len(paths)))
    counter = BadInputCounter("test", max_bad_fraction=0.2)
    ds = ImageDataset(paths, labels, to_tensor, counter)
    seen_idx = []
    for x, y, idx in make_loader(ds, batch_size=8):
        assert x.shape[1:] == (3, 4, 4) and len(x) == len(y) == len(idx)
        assert torch.equal(y, idx)  # labels stay aligned with their images after skipping
        seen_idx += idx.tolist()
    assert seen_idx == list(range(30))
    assert counter.good == 30 and len(counter.bad) == 4
    for name in ("corrupt.png", "empty.jpg", "trunc.png", "missing.png"):
        assert name in caplog.text and any(k.endswith(name) for k in counter.bad)


def test_loader_fails_past_max_bad_fraction_naming_files(tmp_path):
    bad = {f"bad{i}.png": b"garbage" for i in range(10)}
    paths = make_images(tmp_path, 10, bad)
    ds = ImageDataset(paths, [0] * len(paths), to_tensor, BadInputCounter("eval:x", max_bad_fraction=0.1))
    with pytest.raises(TooManyBadInputs, match=r"eval:x: \d+ of \d+ inputs are bad .*/bad\d\.png"):
        for _ in make_loader(ds, batch_size=4):
            pass


def test_all_bad_batch_is_dropped_and_small_fraction_passes(tmp_path):
    paths = make_images(tmp_path, 40, {"z_bad.png": b"xx"})
    ds = ImageDataset(paths, list(range(41)), to_tensor, BadInputCounter("t", max_bad_fraction=0.05))
    batches = list(make_loader(ds, batch_size=1))
    assert len(batches) == 40  # the single-item bad batch is skipped, not yielded as None


def test_loader_with_worker_processes_counts_skips(tmp_path):
    paths = make_images(tmp_path, 12, {"bad.png": b"nope"})
    counter = BadInputCounter("w", max_bad_fraction=0.5)
    ds = ImageDataset(paths, list(range(13)), to_tensor, counter)
    n = sum(len(b[1]) for b in make_loader(ds, batch_size=4, num_workers=2))
    assert n == 12 and counter.good == 12 and len(counter.bad) == 1


def test_from_set_and_border_crop(tmp_path):
    img = Image.new("RGB", (10, 10), (255, 0, 0))
    img.paste((0, 0, 255), (1, 1, 9, 9))
    img.save(tmp_path / "o.png")
    ds = LabeledSet(
        "objectnet", "shift", ["a"], ["{}"], ["o.png"], [0], root=str(tmp_path), border_crop=1, label_map={0: [3]}
    )
    data = ImageDataset.from_set(ds)
    out = data.load(0)
    assert out.size == (8, 8) and set(out.getdata()) == {(0, 0, 255)}  # the red 1-px border is gone
    assert crop_border(Image.new("RGB", (2, 2)), 1).size == (2, 2)
