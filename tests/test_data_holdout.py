"""``arf data holdout``: a val split moved out of a class-folder train set — deterministic, resumable, undoable,
and read by the imagenet suite as its val set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from arf.cli import main
from arf.data import get_suite
from arf.data.assets import load_json_asset
from arf.data.holdout import chosen, hold_out
from arf.data.suites import get_dataset
from arf.errors import ConfigError

WNIDS = load_json_asset("imagenet_wnids")


def tree(root: Path, classes: list[str], n: int) -> dict[str, set[str]]:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            (root / c / f"img_{k}.JPEG").write_bytes(b"x")  # content is never read
        (root / c / "notes.txt").write_text("not an image")
    return files(root)


def files(root: Path) -> dict[str, set[str]]:
    if not root.is_dir():
        return {}
    return {c.name: {f.name for f in c.iterdir()} for c in sorted(root.iterdir()) if c.is_dir()}


def test_holds_out_the_hash_chosen_images_of_every_class_and_is_idempotent(tmp_path: Path) -> None:
    src, dst = tmp_path / "train", tmp_path / "heldout"
    before = tree(src, ["a", "b", "c"], 6)
    res = hold_out(src, dst, per_class=2, seed=0)
    assert (res.classes, res.moved, res.held_out) == (3, 6, 6)
    held = files(dst)
    for c in "abc":
        assert held[c] == set(chosen(0, c, [f"img_{k}.JPEG" for k in range(6)], 2))
        assert files(src)[c] == before[c] - held[c] and "notes.txt" in files(src)[c]
    assert hold_out(src, dst, per_class=2, seed=0).moved == 0 and files(dst) == held
    # Another seed ranks the files by another hash, in another folder.
    other = tmp_path / "heldout-1"
    left = {c: sorted(n for n in files(src)[c] if n.endswith(".JPEG")) for c in "abc"}
    hold_out(src, other, per_class=1, seed=1)
    assert files(other) == {c: set(chosen(1, c, left[c], 1)) for c in "abc"}


def test_a_run_killed_half_way_is_finished_by_running_it_again(tmp_path: Path) -> None:
    whole, part = tmp_path / "whole", tmp_path / "part"
    tree(whole / "train", ["a", "b"], 5)
    shutil.copytree(whole / "train", part / "train")
    hold_out(whole / "train", whole / "heldout", per_class=3)
    # As if killed after the first file: one chosen image of "a" moved, nothing else.
    first = chosen(0, "a", [f"img_{k}.JPEG" for k in range(5)], 3)[0]
    (part / "heldout" / "a").mkdir(parents=True)
    shutil.move(str(part / "train" / "a" / first), str(part / "heldout" / "a" / first))
    res = hold_out(part / "train", part / "heldout", per_class=3)
    assert res.moved == 5 and files(part / "heldout") == files(whole / "heldout")
    assert files(part / "train") == files(whole / "train")


def test_bad_splits_fail_before_anything_moves(tmp_path: Path) -> None:
    src = tmp_path / "train"
    before = tree(src, ["a", "small"], 4)
    (src / "small" / "img_3.JPEG").unlink()
    before["small"].discard("img_3.JPEG")
    with pytest.raises(ConfigError, match=r"class folder .*small has 3 images; holding out 3 would leave none"):
        hold_out(src, tmp_path / "heldout", per_class=3)
    assert files(src) == before and not (tmp_path / "heldout").exists()
    with pytest.raises(ConfigError, match="inside the source"):
        hold_out(src, src / "heldout", per_class=1)
    with pytest.raises(ConfigError, match="--per-class must be >= 1"):
        hold_out(src, tmp_path / "heldout", per_class=0)
    hold_out(src, tmp_path / "heldout", per_class=1)
    with pytest.raises(ConfigError, match="holds a split of per_class=1, seed=0; restore it first"):
        hold_out(src, tmp_path / "heldout", per_class=2)


def test_undo_puts_every_image_back(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, dst = tmp_path / "train", tmp_path / "heldout"
    before = tree(src, ["a", "b"], 4)
    assert main(["data", "holdout", str(src), str(dst), "--per-class", "2"]) == 0
    assert f"4 images of 2 classes held out in {dst} (4 moved now)" in capsys.readouterr().out
    assert main(["data", "holdout", str(src), str(dst), "--undo"]) == 0
    assert "moved 4 images back" in capsys.readouterr().out
    assert files(src) == before and not any(dst.iterdir())
    assert main(["data", "holdout", str(src), str(dst), "--undo"]) == 2
    assert "is not a held-out split" in capsys.readouterr().err


def test_the_imagenet_suite_reads_the_held_out_split_as_its_val_set(tmp_path: Path) -> None:
    from PIL import Image

    for w in WNIDS[:3]:
        for k in range(3):
            for sub in ("train", "val"):
                p = tmp_path / "imagenet" / sub / w / f"{k}.JPEG"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (6, 6)).save(p, format="JPEG")
    suite = get_suite("imagenet", root=tmp_path)
    assert [s.name for s in suite.sets] == ["imagenet"] and not suite.info["missing"]  # optional: no warning
    hold_out(tmp_path / "imagenet" / "train", tmp_path / "imagenet" / "heldout", per_class=1)
    suite = get_suite("imagenet", root=tmp_path)
    assert [(s.name, s.role) for s in suite.sets] == [("imagenet", "id"), ("imagenet-heldout", "val")]
    held = get_dataset("imagenet-heldout", tmp_path)
    assert len(held) == 3 and held.labels == [WNIDS.index(w) for w in WNIDS[:3]]
    assert len(held.classnames) == 1000 and held.reference == "imagenet"
