"""Shared fixtures of the anchor tests (imported by the other test_anchors_* files) and tests of configs/sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from arf.anchors.captioners import compose_caption
from arf.anchors.config import CaptionConfig, IndexConfig, PoolConfig, RetrieveConfig, parse_shard
from arf.anchors.sources import resolve_set
from arf.errors import ConfigError, InputFileError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def tiny_bundle() -> Any:
    """``arf:tiny-clip``: tiny, random, the same weights every time, no network."""
    import arf.models

    return arf.models.create_model("arf:tiny-clip", device="cpu")


def make_image(path: Path, colour: str, variant: int = 0, size: int = 40) -> Path:
    """A small PNG: a coloured square whose position/size depends on ``variant`` (so images differ in bytes)."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    rgb = COLOURS[colour]
    off = variant % 10
    for x in range(4 + off, 24 + off):
        for y in range(6, 30 - off % 5):
            img.putpixel((x, y), rgb)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_folder_set(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("red", "blue")) -> Path:
    for c in classes:
        for i in range(per_class):
            make_image(root / c / f"{c}_{i}.png", c, i)
    return root


def make_pool(root: Path, n_per_class: int = 6, corrupt: int = 0, extra: list[tuple[Path, str]] | None = None,
              classes: tuple[str, ...] = ("red", "green", "blue", "yellow")) -> Path:
    """pool.parquet (path relative to root, text) with ``corrupt`` broken files and optional extra (file, text)."""
    rows = []
    for c in classes:
        for i in range(n_per_class):
            rel = f"pool/{c}_{i}.png"
            make_image(root / rel, c, i, size=44)  # 44 px: never byte-equal to a 40 px set image
            rows.append((rel, f"a {c} square number {i}"))
    for j in range(corrupt):
        rel = f"pool/broken_{j}.png"
        (root / rel).write_bytes(b"\x89PNG not really" * (j + 1))
        rows.append((rel, f"broken picture {j}"))
    for src, text in extra or []:
        rel = f"pool/extra_{len(rows)}.png"
        (root / rel).write_bytes(Path(src).read_bytes())
        rows.append((rel, text))
    pq.write_table(pa.table({"path": [r[0] for r in rows], "text": [r[1] for r in rows]}), root / "pool.parquet")
    return root / "pool.parquet"


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize(("cfg", "field"), [
    (CaptionConfig(images="x", captioner="nope"), "captioner"),
    (CaptionConfig(images="x", captioner="hf"), "captioner"),
    (CaptionConfig(images="x", batch_size=0), "batch_size"),
    (CaptionConfig(images="x", chunk_size=0), "chunk_size"),
    (CaptionConfig(images=""), "images"),
    (PoolConfig(source="p", out="o", shard_size=0), "shard_size"),
    (PoolConfig(source="p", out="o", shard="3/2"), "shard"),
    (PoolConfig(source="p", out="o", dtype="int8"), "dtype"),
    (IndexConfig(emb="e", kind="lsh"), "kind"),
    (IndexConfig(emb="e", target_recall=1.5), "target_recall"),
    (RetrieveConfig(emb="e", images="i", k=0), "k"),
    (RetrieveConfig(emb="e", images="i", floor=-0.1), "floor"),
    (RetrieveConfig(emb="e", images="i", strategy="magic"), "strategy"),
])
def test_validate_names_the_bad_field(cfg: Any, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    msg = str(e.value)
    assert field in msg or "choose from" in msg
    if "unknown" in msg:
        assert "choose from" in msg


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown captioner 'nope'; choose from file, hf, retrieval"):
        CaptionConfig(images="x", captioner="nope").validate()
    with pytest.raises(ConfigError, match="image2image, text2image, text2text"):
        RetrieveConfig(emb="e", images="i", strategy="magic").validate()


def test_parse_shard() -> None:
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "a/b", "1", "-1/2"):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)


def test_compose_caption_adds_only_new_content_words() -> None:
    assert compose_caption(["a red dog on grass"]) == "a red dog on grass"
    assert compose_caption(["a red dog on grass", "the dog in a park", "a red dog"]) == "a red dog on grass, park"
    assert compose_caption(["A cat.", "a cat sleeping on a sofa"]) == "A cat., sleeping sofa"


def test_resolve_folder_and_manifest(tmp_path: Path) -> None:
    root = make_folder_set(tmp_path / "set")
    s = resolve_set(root)
    assert s.classnames == ["blue", "red"] and len(s.paths) == 6
    assert s.labels == [0, 0, 0, 1, 1, 1] and s.paths[0] == "blue/blue_0.png"
    # A manifest inside a sub-folder with paths relative to the parent (the offline benchmark layout).
    (root / "sets").mkdir()
    pq.write_table(pa.table({"path": ["red/red_0.png", "blue/blue_1.png"], "label": [1, 0],
                             "classname": ["red", "blue"]}), root / "sets" / "mini.parquet")
    m = resolve_set(root / "sets" / "mini.parquet")
    assert m.root == root and m.classnames == ["blue", "red"] and m.abs_path(m.paths[0]).is_file()
    with pytest.raises(InputFileError, match="not found"):
        resolve_set(tmp_path / "missing")
    # open_clip's tab-separated CSV names the column `filepath`; a malformed manifest names its file.
    (root / "sets" / "oc.tsv").write_text("filepath\ttitle\nred/red_0.png\ta red one\n")
    assert resolve_set(root / "sets" / "oc.tsv").paths == ["red/red_0.png"]
    (root / "sets" / "bad.csv").write_text("path,label\nred/red_0.png,1,extra\n")
    with pytest.raises(InputFileError, match=r"manifest .*bad\.csv: cannot read"):
        resolve_set(root / "sets" / "bad.csv")


def test_tiny_bundle_towers_are_unit_norm() -> None:
    from arf.anchors.encode import class_text_queries, encode_texts

    b = tiny_bundle()
    t = encode_texts(b, ["a red square", "a blue square"])
    assert t.shape[0] == 2 and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    q = class_text_queries(b, ["red", "blue"], ["a photo of a {}.", "a {c} thing"])
    assert q.shape == (2, t.shape[1]) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
