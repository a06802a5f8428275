"""arf.data.suites: every registered suite on tiny fake trees; ImageNet-A/-R masks and ObjectNet mapping on logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arf.data import get_dataset, get_suite, list_suites, load_classnames, load_json_asset, load_templates
from arf.data.suites import ZEROSHOT_10
from arf.errors import ConfigError, InputFileError

WNIDS = load_json_asset("imagenet_wnids")


def img(path: Path, color=(0, 0, 255), size=6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


def fake_imagenet_tree(root: Path, n_per_class: int = 1) -> None:
    """A few folders of each ImageNet-style dataset (not all classes: loaders must cope with missing folders)."""
    for w in WNIDS[:3] + WNIDS[-2:]:
        for k in range(n_per_class):
            img(root / "imagenet" / "val" / w / f"{k}.JPEG")
            img(root / "imagenet-sketch" / w / f"{k}.png")
    for i in (0, 1, 999):
        img(root / "imagenetv2" / str(i) / "a.jpeg")
    for sub, key in (("imagenet-a", "imagenet_a_wnids"), ("imagenet-r", "imagenet_r_wnids")):
        for w in load_json_asset(key)[:4]:
            img(root / sub / w / "x.jpg")


def fake_objectnet(root: Path) -> None:
    d = root / "objectnet"
    maps = {"Alarm clock": "analog clock; digital clock", "Banana": "banana", "Backpack": "backpack"}
    folders = {"alarm_clock": "Alarm clock", "banana": "Banana", "backpack": "Backpack", "blender": "Blender"}
    (d / "mappings").mkdir(parents=True)
    (d / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(maps))
    (d / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(folders))
    for f in folders:
        img(d / "images" / f / "1.png", size=12)


def test_assets_have_the_official_sizes():
    assert len(load_classnames("imagenet")) == 1000 and len(load_templates("imagenet")) == 80
    assert len(WNIDS) == 1000 and WNIDS == sorted(WNIDS)
    for k in ("a", "r"):
        mask = load_json_asset(f"imagenet_{k}_mask")
        wn = load_json_asset(f"imagenet_{k}_wnids")
        assert len(mask) == len(wn) == len(load_classnames(f"imagenet_{k}")) == 200
        assert [WNIDS[i] for i in mask] == wn  # mask indices point at the same synsets
        assert load_classnames(f"imagenet_{k}") == [load_classnames("imagenet")[i] for i in mask]
    assert len(load_classnames("flowers102")) == 102 and len(load_classnames("eurosat")) == 10
    with pytest.raises(ConfigError, match="unknown classname asset 'nope'; choose from"):
        load_classnames("nope")


def test_unknown_suite_lists_choices():
    with pytest.raises(ConfigError, match="unknown suite 'imagenet-x'; choose from imagenet, imagenet-shift"):
        get_suite("imagenet-x")
    assert {"offline", "imagenet", "imagenet-shift", "zeroshot-10"} <= set(list_suites())


@pytest.mark.parametrize("name", [n for n in list_suites() if not n.startswith("offline")])  # built, not a tree
def test_every_user_suite_loads_from_a_fake_tree(name, tmp_path):
    fake_imagenet_tree(tmp_path)
    fake_objectnet(tmp_path)
    for spec in ZEROSHOT_10:
        n = len(load_classnames(spec.classnames)) if spec.classnames in ("eurosat", "flowers102", "caltech101") else 3
        for c in range(n):
            folder = str(c + 1) if spec.name == "flowers102" else f"class_{c:03d}"
            img(tmp_path / spec.subdir / folder / "0.png")
    suite = get_suite(name, root=tmp_path)
    assert suite.sets and not suite.info["missing"]
    for s in suite.sets:
        assert len(s) > 0 and s.templates and all(0 <= y < len(s.classnames) for y in s.labels)
        assert all(Path(p).is_file() for p in s.abspaths())
        assert s.role == {"imagenet": "id", "imagenet-shift": "shift", "zeroshot-10": "zeroshot"}[name]


def test_imagenet_labels_follow_wnid_order_and_v2_index_folders(tmp_path):
    fake_imagenet_tree(tmp_path)
    inet = get_dataset("imagenet", tmp_path)
    assert sorted(set(inet.labels)) == [0, 1, 2, 998, 999] and len(inet.classnames) == 1000
    v2 = get_dataset("imagenet-v2", tmp_path)
    assert v2.labels == [0, 1, 999]  # folders "0", "1", "999": numeric order, label = folder number


def test_imagenet_a_r_masks_change_the_argmax_on_logits(tmp_path):
    fake_imagenet_tree(tmp_path)
    for name in ("imagenet-a", "imagenet-r"):
        ds = get_dataset(name, tmp_path)
        mask = ds.class_mask
        assert ds.reference == "imagenet" and len(mask) == 200 == len(ds.classnames)
        # The image of set class 2 is labelled with the wnid folder -> reference index mask[2].
        assert ds.labels[:4] == [0, 1, 2, 3]
        logits = torch.full((1, 1000), -5.0)
        outside = next(i for i in range(1000) if i not in set(mask))
        logits[0, outside] = 10.0  # the unmasked winner is a class this set does not contain
        logits[0, mask[2]] = 3.0
        assert logits.argmax(1).item() == outside
        masked = ds.to_set_logits(logits)
        assert masked.shape == (1, 200) and masked.argmax(1).item() == 2 == ds.labels[2]
        assert ds.to_set_logits(logits.numpy()).argmax(1)[0] == 2  # numpy works too


def test_objectnet_mapping_on_logits_and_border_crop(tmp_path):
    fake_objectnet(tmp_path)
    ds = get_dataset("objectnet", tmp_path)
    names = load_classnames("imagenet")
    assert ds.classnames == ["alarm clock", "backpack", "banana"]  # "Blender" has no ImageNet class: dropped
    assert len(ds) == 3 and ds.border_crop == 1 and ds.reference == "imagenet"
    analog, digital, banana = names.index("analog clock"), names.index("digital clock"), names.index("banana")
    assert ds.label_map[0] == sorted([analog, digital]) and ds.label_map[2] == [banana]
    logits = np.zeros((2, 1000), dtype=np.float32)
    logits[0, digital] = 5.0  # any of the mapped classes counts for "alarm clock"
    logits[1, banana] = 2.0
    logits[1, 7] = 9.0  # an unmapped ImageNet class wins the raw argmax but is not an ObjectNet class
    out = ds.to_set_logits(logits)
    assert out.shape == (2, 3) and out.argmax(1).tolist() == [0, 2]
    assert ds.to_set_logits(torch.from_numpy(logits)).argmax(1).tolist() == [0, 2]
    by_label = dict(zip(ds.labels, ds.paths, strict=True))
    assert by_label[0].startswith("alarm_clock/") and by_label[2].startswith("banana/")


def test_objectnet_unknown_imagenet_name_is_an_error(tmp_path):
    fake_objectnet(tmp_path)
    (tmp_path / "objectnet" / "mappings" / "objectnet_to_imagenet_1k.json").write_text('{"Banana": "bananarama"}')
    with pytest.raises(ConfigError, match=r"'bananarama' .* is not an ImageNet-1k label"):
        get_dataset("objectnet", tmp_path)


def test_missing_datasets_are_skipped_with_a_warning_or_fail_when_none(tmp_path, caplog):
    img(tmp_path / "imagenet-sketch" / WNIDS[0] / "a.png")
    suite = get_suite("imagenet-shift", root=tmp_path)
    assert suite.names() == ["imagenet-sketch"] and len(suite.info["missing"]) == 4
    assert "imagenet-a" in caplog.text
    with pytest.raises(InputFileError, match="suite 'zeroshot-10': no dataset found"):
        get_suite("zeroshot-10", root=tmp_path / "empty")


def test_class_name_file_count_mismatch_and_manifest_with_unknown_label(tmp_path):
    for c in range(3):  # EuroSAT has 10 classes; 3 folders do not match its class-name file
        img(tmp_path / "eurosat" / f"c{c}" / "0.png")
    with pytest.raises(ConfigError, match="3 class folders but 10 class names"):
        get_dataset("eurosat", tmp_path)
    d = tmp_path / "dtd"
    img(d / "imgs" / "a.png")
    img(d / "banded" / "b.png")
    (d / "manifest.csv").write_text("path,label\nimgs/a.png,banded\nimgs/a.png,not-a-texture\n")
    with pytest.raises(Exception, match=r"manifest.csv row 2: unknown label 'not-a-texture'"):
        get_dataset("dtd", tmp_path)


def test_manifest_dataset_and_folder_name_classnames(tmp_path):
    d = tmp_path / "food101"
    for c in ("apple_pie", "baby_back_ribs"):
        img(d / c / "1.png")
    ds = get_dataset("food101", tmp_path)
    assert ds.classnames == ["apple pie", "baby back ribs"] and ds.labels == [0, 1]
    assert ds.templates == ["a photo of {}, a type of food."]
