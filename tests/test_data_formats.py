"""arf.data.formats: LabeledSet validation, class folders, manifests, image–text pairs (CSV/parquet/webdataset)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from arf.data import (
    LabeledSet,
    ManifestError,
    Suite,
    read_class_folders,
    read_label_manifest,
    read_pairs,
    safe_join,
)
from arf.errors import ConfigError, InputFileError


def png(path: Path, color=(200, 30, 30), size=8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def png_bytes(color=(10, 200, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_labeled_set_validates_role_labels_templates_and_masks():
    kw = dict(classnames=["a", "b"], templates=["a photo of a {}."], paths=["x.png", "y.png"], labels=[0, 1])
    ds = LabeledSet("s", "id", **kw)
    assert ds.class_counts() == {"a": 1, "b": 1}
    assert ds.prompts("dog") == ["a photo of a dog."]
    roles = "train, val, val-shift, val-zeroshot, id, shift, zeroshot"
    with pytest.raises(ConfigError, match=f"unknown role 'test'; choose from {roles}"):
        LabeledSet("s", "test", **kw)
    with pytest.raises(ConfigError, match="label 2 out of range"):
        LabeledSet("s", "id", **{**kw, "labels": [0, 2]})
    with pytest.raises(ConfigError, match="no '\\{\\}' placeholder"):
        LabeledSet("s", "id", **{**kw, "templates": ["a photo"]})
    with pytest.raises(ConfigError, match="class_mask has 3 entries but the set has 2 classes"):
        LabeledSet("s", "shift", **kw, class_mask=[1, 2, 3])
    with pytest.raises(ConfigError, match="label_map has no entry for class 1"):
        LabeledSet("s", "shift", **kw, label_map={0: [4]})


def test_suite_get_and_by_role():
    a = LabeledSet("a", "id", ["x"], ["{}"], ["p"], [0])
    b = LabeledSet("b", "shift", ["x"], ["{}"], ["p"], [0])
    s = Suite("demo", [a, b])
    assert s.get("b") is b and s.by_role("id") == [a] and s.names() == ["a", "b"]
    with pytest.raises(ConfigError, match="suite 'demo' has no set 'c'; choose from a, b"):
        s.get("c")
    assert s.select(["b", "a"]) == {"b": b, "a": a}
    with pytest.raises(ConfigError, match=r"^--sets: suite 'demo' has no set 'c'; choose from a, b$"):
        s.select(["a", "c"], "--sets")


def test_class_folders_order_count_and_empty_folder(tmp_path, caplog):
    png(tmp_path / "cat" / "1.png")
    png(tmp_path / "cat" / "2.jpg")
    png(tmp_path / "dog" / "1.png")
    (tmp_path / "emu").mkdir()
    paths, labels, folders = read_class_folders(tmp_path)
    assert folders == ["cat", "dog", "emu"]
    assert paths == ["cat/1.png", "cat/2.jpg", "dog/1.png"] and labels == [0, 0, 1]
    assert "class folder 'emu' is empty" in caplog.text
    # An explicit order (e.g. wnids) fixes the label indices.
    paths, labels, _ = read_class_folders(tmp_path, folders=["dog", "cat", "emu"])
    assert paths == ["dog/1.png", "cat/1.png", "cat/2.jpg"] and labels == [0, 1, 1]
    with pytest.raises(ConfigError, match="3 class folders but 2 class names"):
        read_class_folders(tmp_path, classnames=["cat", "dog"])
    with pytest.raises(InputFileError, match="does not exist"):
        read_class_folders(tmp_path / "missing")


def test_label_manifest_names_indices_unknown_labels_and_escapes(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "sub" / "b.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,dog\nsub/b.png,1\n")
    paths, labels = read_label_manifest(tmp_path / "m.csv", ["cat", "dog"])
    assert paths == ["a.png", "sub/b.png"] and labels == [1, 1]
    (tmp_path / "bad.csv").write_text("path,label\na.png,cat\na.png,zebra\n")
    with pytest.raises(ManifestError, match=r"bad.csv row 2: unknown label 'zebra'"):
        read_label_manifest(tmp_path / "bad.csv", ["cat", "dog"])
    (tmp_path / "range.csv").write_text("path,label\na.png,7\n")
    with pytest.raises(ManifestError, match="label 7 out of range for 2 classes"):
        read_label_manifest(tmp_path / "range.csv", ["cat", "dog"])
    (tmp_path / "esc.csv").write_text("path,label\na.png,cat\n../../etc/passwd,cat\n")
    with pytest.raises(ManifestError, match=r"esc.csv row 2: path '../../etc/passwd' escapes the dataset root"):
        read_label_manifest(tmp_path / "esc.csv", ["cat", "dog"])
    (tmp_path / "abs.csv").write_text("path,label\n/etc/passwd,cat\n")
    with pytest.raises(ManifestError, match=r"abs\.csv row 1: path '/etc/passwd' escapes"):
        read_label_manifest(tmp_path / "abs.csv", ["cat", "dog"])
    # An absolute path inside the root is fine.
    (tmp_path / "absin.csv").write_text(f"path,label\n{tmp_path / 'a.png'},cat\n")
    assert read_label_manifest(tmp_path / "absin.csv", ["cat", "dog"])[0] == ["a.png"]


def test_safe_join_refuses_symlink_escape(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(ManifestError, match="escapes"):
        safe_join(root, "link/x.png", "m row 1")


def test_read_pairs_csv_and_parquet_with_caption_column(tmp_path):
    png(tmp_path / "img" / "a.png")
    png(tmp_path / "img" / "b.png")
    (tmp_path / "p.csv").write_text('path,caption\nimg/a.png,"a red square"\nimg/b.png,another one\n')
    pairs = read_pairs(tmp_path / "p.csv")
    assert [p.id for p in pairs] == ["img/a.png", "img/b.png"]
    assert pairs[0].text == "a red square" and Path(pairs[0].path).is_file() and pairs[0].image is None
    pq.write_table(pa.table({"path": ["img/a.png"], "text": ["t"], "family": ["f"]}), tmp_path / "p.parquet")
    (pp,) = read_pairs(tmp_path / "p.parquet")
    assert pp.text == "t" and pp.meta == {"family": "f"}
    # Stable ids: reading twice gives the same ids.
    assert [p.id for p in read_pairs(tmp_path / "p.csv")] == [p.id for p in pairs]
    (tmp_path / "esc.csv").write_text("path,text\n../x.png,t\n")
    with pytest.raises(ManifestError, match=r"esc\.csv row 1"):
        read_pairs(tmp_path / "esc.csv")
    (tmp_path / "nocol.csv").write_text("path,label\nimg/a.png,1\n")
    with pytest.raises(ManifestError, match=r"needs a path column \('path' or 'filepath'\) and a text column "
                                            r"\('text' or 'caption' or 'title'\)"):
        read_pairs(tmp_path / "nocol.csv")


def test_read_pairs_takes_open_clips_csv_columns(tmp_path):
    # open_clip's training CSV: tab-separated, --csv-img-key filepath, --csv-caption-key title.
    png(tmp_path / "img" / "a.png")
    png(tmp_path / "img" / "b.png")
    (tmp_path / "train.tsv").write_text("filepath\ttitle\tsource\nimg/a.png\ta red square\tx\nimg/b.png\t42\ty\n")
    pairs = read_pairs(tmp_path / "train.tsv")
    assert [p.id for p in pairs] == ["img/a.png", "img/b.png"]
    assert [p.text for p in pairs] == ["a red square", "42"] and pairs[0].meta == {"source": "x"}


def test_csv_cells_stay_text(tmp_path):
    # Left to pyarrow's inference "007" would become the number 7: a class named "007" would read as index 7,
    # and a file named "007" would not be found.
    (tmp_path / "007").write_bytes(b"")  # manifests are read without opening the images
    (tmp_path / "m.csv").write_text("path,label\n007,007\n")
    classes = [f"{i:03d}" for i in range(10)][::-1]  # "007" is index 2
    assert read_label_manifest(tmp_path / "m.csv", classes) == (["007"], [2])
    # A column that looks numeric in its first rows and holds a word further down still reads.
    (tmp_path / "p.csv").write_text("path,text\n007,1\n007b,2\n" + "x,3\n" * 2 + "y,word\n")
    texts = [p.text for p in read_pairs(tmp_path / "p.csv", max_bad_fraction=1.0)]
    assert texts == ["1", "2", "3", "word"]  # the repeated "x" row is counted and skipped


def _shard(path: Path, samples: list[tuple[str, bytes | None, str, dict | None]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for key, img, text, meta in samples:
            members = [("txt", text.encode())]
            if img is not None:
                members.insert(0, ("jpg", img))
            if meta is not None:
                members.append(("json", json.dumps(meta).encode()))
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def test_read_pairs_webdataset_shards(tmp_path, caplog):
    img = png_bytes()
    _shard(
        tmp_path / "00000.tar",
        [
            ("000000000", img, "a green square", {"url": "http://x", "width": 8}),
            ("000000001", None, "no image here", None),
        ],
    )
    _shard(tmp_path / "00001.tar", [("000000002", b"not an image", "corrupt", {})])
    pairs = read_pairs(tmp_path)
    assert [p.id for p in pairs] == ["00000.tar/000000000", "00001.tar/000000002"]
    assert pairs[0].image == img and pairs[0].text == "a green square" and pairs[0].meta["url"] == "http://x"
    assert "has no image" in caplog.text
    assert [p.id for p in read_pairs(tmp_path / "00000.tar")] == ["00000.tar/000000000"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match=r"no webdataset \.tar shards"):
        read_pairs(tmp_path / "empty")
