"""arf.data.suite_file: a YAML suite of your own sets — read by get_suite, evaluated by `arf eval`, trained on by
`arf train`, named as `suite:<file>/<set>` by the anchor stages — and one error naming the file and field per
mistake."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from arf.anchors.sources import resolve_set, suite_siblings, suite_spec
from arf.cli import main
from arf.data import get_suite
from arf.data.suites import folder_classnames
from arf.errors import ArfError, ConfigError, InputFileError
from arf.evaluate import Head, read_records
from arf.evaluate.runner import label_groups

COLORS = {"Golden_Retriever": (200, 160, 60), "cat": (40, 40, 40), "zebra": (240, 240, 240)}


def _folder(root: Path, classes: list[str], per_class: int = 2, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-20, 20, (size, size, 3))
            px = np.clip(np.array(COLORS[c])[None, None] + noise, 0, 255).astype("uint8")
            Image.fromarray(px).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def task(tmp_path: Path) -> Path:
    """A user's task: class-folder train / val / test, a shifted set over one class, a zero-shot manifest."""
    data = tmp_path / "data"
    for name in ("train", "val", "test"):
        _folder(data / name, ["Golden_Retriever", "cat"], per_class=4 if name == "train" else 2)
    _folder(data / "sketch", ["cat"])
    _folder(data / "other" / "img", ["zebra"])
    (data / "other" / "labels.csv").write_text("path,label\nimg/zebra/0.png,zebra\nimg/zebra/1.png,0\n")
    spec = {"name": "pets", "root": "data", "templates": ["a photo of a {}."],
            "sets": {"train": {"path": "train", "role": "train"}, "val": {"path": "val", "role": "val"},
                     "test": {"path": "test", "role": "id"},
                     "sketch": {"path": "sketch", "role": "shift", "templates": "generic"},
                     "other": {"path": "other/labels.csv", "role": "zeroshot", "classnames": ["zebra"]}}}
    f = tmp_path / "pets.yaml"
    f.write_text(yaml.safe_dump(spec, sort_keys=False))
    return f


def test_suite_file_sets_roles_class_names_and_head_columns(task: Path) -> None:
    suite = get_suite(str(task))
    assert suite.name == "pets" and [s.name for s in suite.sets] == ["train", "val", "test", "sketch", "other"]
    test, sketch, other = suite.get("test"), suite.get("sketch"), suite.get("other")
    assert test.role == "id" and test.classnames == ["golden retriever", "cat"] and len(test) == 4
    assert test.templates == ["a photo of a {}."] and sketch.templates[0] == "a photo of a {}."  # generic asset
    # The shifted set holds one class of two: the finetuned head's column for it reads it.
    assert sketch.class_mask == [1] and sketch.labels == [0, 0]
    head = Head(torch.zeros(2, 4), torch.zeros(2), test.classnames, kind="trained", reference="pets")
    assert label_groups(sketch, head) == (True, [[1]]) and label_groups(other, head) == (False, None)
    assert other.labels == [0, 0] and Path(other.abspath(0)).is_file()  # a name and an index, paths from the CSV
    # --data-root replaces the file's root.
    assert get_suite(str(task), root=task.parent / "data").get("test").root == str(task.parent / "data" / "test")


def test_suite_file_through_arf_eval(task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "records.jsonl"
    assert main(["eval", "--model", "arf:tiny-clip", "--suite", str(task), "--out", str(out), "--no-progress"]) == 0
    records = read_records(out)
    assert {r.set for r in records} == {"val", "test", "sketch", "other"}
    assert {r.role for r in records if r.set == "sketch"} == {"shift"}
    assert "ID" in capsys.readouterr().out


def test_suite_file_through_arf_train_and_the_anchor_stages(task: Path, tmp_path: Path) -> None:
    args = ["train", "--method", "flyp", "--out-dir", str(tmp_path / "runs"), "--set", "model=arf:tiny-clip",
            "--set", f"suite={task}", "--set", "batch_size=4", "--set", "max_steps=1", "--set", "progress=false"]
    assert main(args) == 0
    meta = json.loads((tmp_path / "runs" / "flyp" / "final" / "arf.json").read_text())
    assert meta["train"]["train_set"] == "train" and meta["train"]["suite"] == str(task)
    # The anchor stages name the same set, with the suite's class names (so anchors match the training set).
    spec = suite_spec(str(task), "train")
    images = resolve_set(spec)
    assert images.classnames == ["golden retriever", "cat"] and len(images.paths) == 8
    assert sorted(s.name for s in suite_siblings(spec)) == ["other", "sketch", "test", "val"]


def test_editing_the_suite_file_makes_another_training_run(task: Path, tmp_path: Path) -> None:
    from arf.config import load_config
    from arf.train.config import TrainConfig
    from arf.train.run_hash import train_hash

    cfg = load_config(TrainConfig, None, [f"suite={task}", "model=arf:tiny-clip"])
    before = train_hash(cfg)
    task.write_text(task.read_text().replace("path: train", "path: val", 1))
    assert train_hash(cfg) != before


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: {**s, "colour": 1}, r"pets\.yaml: colour: unknown field; choose from classnames, name, root"),
    (lambda s: {**s, "sets": []}, r"sets: expected a mapping of set name"),
    (lambda s: {**s, "sets": {**s["sets"], "test": {"path": "test", "role": "ID"}}},
     r"sets\.test\.role: unknown role 'ID'; choose from train, val"),
    (lambda s: {**s, "sets": {**s["sets"], "test": {"role": "id"}}}, r"sets\.test\.path: missing"),
    (lambda s: {**s, "sets": {**s["sets"], "test": {"path": "test", "role": "id", "weight": 2}}},
     r"sets\.test\.weight: unknown field"),
    (lambda s: {**s, "sets": {**s["sets"], "other": {"path": "other/labels.csv", "role": "zeroshot"}}},
     r"sets\.other\.classnames: a manifest needs the class names"),
    (lambda s: {**s, "sets": {**s["sets"], "test": {"path": "test", "role": "id", "classnames": "dogs.json"}}},
     r"sets\.test\.classnames: .*dogs\.json does not exist"),
    (lambda s: {**s, "templates": "fancy"}, r"templates: 'fancy' is neither a \.json / \.txt file nor a templates "
                                            r"asset; assets: caltech101"),
    (lambda s: {**s, "templates": ["a photo"]}, r"sets\.train: set 'train': template 'a photo' has no"),
    (lambda s: {**s, "sets": {**s["sets"], "test": {"path": "nowhere", "role": "id"}}},
     r"sets\.test\.path: .*nowhere is neither a folder of class folders nor a \.csv"),
    (lambda s: {**s, "sets": {**s["sets"], "test": {"path": "test", "role": "id", "classnames": ["dog"]}}},
     r"pets\.yaml: sets\.test: .*2 class folders but 1 class names"),
    (lambda s: {**s, "sets": {**s["sets"], "other": {"path": "other/labels.csv", "role": "zeroshot",
                                                     "classnames": ["horse"]}}},
     r"pets\.yaml: sets\.other: manifest .*labels\.csv row 1: unknown label 'zebra'"),
    (lambda s: {**s, "sets": {**s["sets"], "sketch": {"path": "other/img", "role": "shift"}}},
     r"sets\.sketch\.classnames: a shift set's classes must be the id set's \(test\) or a subset of them; 'zebra'"),
])
def test_each_mistake_is_one_error_naming_the_file_and_field(task: Path, edit, message: str) -> None:
    spec = yaml.safe_load(task.read_text())
    task.write_text(yaml.safe_dump(edit(spec), sort_keys=False))
    with pytest.raises(ArfError, match=message):
        get_suite(str(task))


def test_suite_file_not_found_invalid_yaml_and_unknown_suite(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="suite file not found"):
        get_suite(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("sets: [unclosed\n")
    with pytest.raises(InputFileError, match=r"bad\.yaml: not valid YAML"):
        get_suite(str(tmp_path / "bad.yaml"))
    with pytest.raises(ConfigError, match=r"unknown suite 'pets'; choose from .*, or a suite file of your own sets"):
        get_suite("pets")


def test_folder_class_names_follow_the_label_order_of_digit_folders(tmp_path: Path) -> None:
    for name in ("1", "2", "10"):
        (tmp_path / name).mkdir()
    assert folder_classnames(tmp_path) == ["1", "2", "10"]  # as read_class_folders numbers them, not "1", "10", "2"
