"""Anchor stages on the real offline benchmark with the real base model (arf:mini-clip); skipped until both are
built (`arf data build`, `arf base build`). Small subsets keep them to seconds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arf.errors import ArfError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def offline() -> dict:
    import arf.data
    import arf.models

    try:
        suite = arf.data.get_suite("offline")
        bundle = arf.models.create_model("arf:mini-clip")
    except ArfError as e:
        pytest.skip(f"offline benchmark or base model not built: {e}")
    return {"suite": suite, "root": Path(suite.info["root"]), "bundle": bundle,
            "sets": {s.name: s for s in suite.sets}}


def test_retrieval_captions_of_train_images_come_from_the_alignment_corpus(offline: dict, tmp_path: Path) -> None:
    from arf.anchors.caption import run_caption
    from arf.anchors.captioners import RetrievalCaptioner, read_corpus
    from arf.anchors.config import CaptionConfig
    from arf.anchors.sources import ImageSet, resolve_set

    full = resolve_set(offline["sets"]["train"])
    sub = ImageSet(full.name, full.root, full.paths[::60], full.classnames, full.labels[::60])   # 40 images
    corpus = read_corpus(offline["root"] / "alignment.parquet")[:800]   # a slice keeps the text encoding short
    cap = RetrievalCaptioner(offline["bundle"], corpus, top_m=3, margin=0.05)
    res = run_caption(CaptionConfig(images="train", out=str(tmp_path / "caps")), captioner=cap, images=sub)
    t = pq.read_table(res.path).to_pylist()
    assert len(t) == 40 and res.n_skipped == 0
    # Each caption starts with the corpus text nearest to the image under the real towers.
    from arf.anchors.encode import encode_pils
    from arf.images import open_image

    emb = encode_pils(offline["bundle"], [open_image(sub.abs_path(r["image_id"])) for r in t])
    best = (emb @ cap.text_emb.T).argmax(axis=1)
    assert all(r["caption"].startswith(corpus[j]) for r, j in zip(t, best, strict=True))


def test_pool_subset_embed_retrieve_excludes_every_finetuning_and_test_image(offline: dict, tmp_path: Path) -> None:
    from arf.anchors.config import PoolConfig, RetrieveConfig
    from arf.anchors.pool import embed_pool
    from arf.anchors.retrieve import retrieve
    from arf.anchors.sources import suite_siblings

    root = offline["root"]
    pool = pq.read_table(root / "pool.parquet").slice(0, 200)
    train = offline["sets"]["train"]
    # Plant two finetuning images in the pool: they must never come back.
    planted = pa.table({"path": [train.paths[0], train.paths[1]], "text": ["planted one", "planted two"]})
    manifest = tmp_path / "pool_subset.parquet"
    pq.write_table(pa.concat_tables([pool.select(["path", "text"]), planted]), manifest)
    emb = tmp_path / "emb"
    embed_pool(PoolConfig(source=str(manifest), root=str(root), out=str(emb), shard_size=64, progress=False),
               offline["bundle"])
    res = retrieve(RetrieveConfig(emb=str(emb), images="suite:offline/train", model="arf:mini-clip", k=2,
                                  out=str(tmp_path / "anchors")), bundle=offline["bundle"])
    t = pq.read_table(res.path).to_pylist()
    assert res.n_excluded >= 2 and t and not any(r["text"].startswith("planted") for r in t)
    banned = {hashlib.sha256((root / p).read_bytes()).hexdigest() for s in [train, *suite_siblings(
        "suite:offline/train")] for p in s.paths}
    assert not any(hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest() in banned for r in t)


def test_a_suite_spec_naming_no_set_of_the_suite_says_which_sets_it_has(offline: dict) -> None:
    from arf.anchors.sources import resolve_set
    from arf.errors import ConfigError

    with pytest.raises(ConfigError, match="suite 'offline' has no set 'nope'; choose from train, val, id, "):
        resolve_set("suite:offline/nope")
