"""Retrieved anchors: selection (top-k, balance, dedup, floor), exclusion of finetuning/test images, strategies,
the sidecar that refuses foreign anchors, the CLI."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arf.anchors.config import IndexConfig, PoolConfig, RetrieveConfig
from arf.anchors.index import build_pool_index
from arf.anchors.pool import embed_pool
from arf.anchors.retrieve import STRATEGIES, Queries, excluded_rows, load_anchors, retrieve, select_anchors
from arf.anchors.sources import ImageSet, resolve_set
from arf.cli import main
from arf.errors import ArfError, ConfigError
from test_anchors_common import make_folder_set, make_image, make_pool, tiny_bundle


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


def test_select_is_top_k_balanced_deduplicated_with_floor_and_exclusion() -> None:
    # Class 0 looks along e0, class 1 along e1. Row 2 is close to both but closer to class 1.
    x = np.stack([_unit([1, 0, 0]), _unit([1, 0.2, 0]), _unit([0.8, 1, 0]), _unit([0, 1, 0.1]),
                  _unit([0, 1, 0.5]), _unit([0, 0, 1]), _unit([1, 0.05, 0])])
    q = Queries("image", [_unit([1, 0, 0])[None], _unit([0, 1, 0])[None]])
    none = np.zeros(len(x), bool)
    out = select_anchors(None, x, q, k=2, floor=None, excluded=none)
    assert [r for r, _ in out[0]] == [0, 6] and [r for r, _ in out[1]] == [3, 4]
    out = select_anchors(None, x, q, k=10, floor=None, excluded=none)
    rows = [r for lst in out for r, _ in lst]
    assert len(rows) == len(set(rows)) == len(x)            # every row once, never in two classes
    assert 2 in [r for r, _ in out[1]]                      # row 2 goes to its best class
    assert all(a[1] >= b[1] for lst in out for a, b in itertools.pairwise(lst))   # best first
    out = select_anchors(None, x, q, k=10, floor=0.9, excluded=none)
    assert all(s >= 0.9 for lst in out for _, s in lst) and len(out[0]) == 3
    excl = none.copy()
    excl[[0, 3]] = True
    out = select_anchors(None, x, q, k=2, floor=None, excluded=excl)
    assert [r for r, _ in out[0]] == [6, 1] and [r for r, _ in out[1]] == [4, 2]


def test_excluded_rows_by_hash_and_by_path(tmp_path: Path) -> None:
    ft = resolve_set(make_folder_set(tmp_path / "ft", per_class=1))
    f0, f1 = (ft.abs_path(p) for p in ft.paths)
    copy = tmp_path / "copy.png"
    copy.write_bytes(f0.read_bytes())
    other = make_image(tmp_path / "other.png", "green")
    import hashlib

    sha = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (copy, other)] + ["0" * 64]
    meta = pa.table({"path": [str(copy), str(other), str(f1)], "sha256": sha})
    # copy: same bytes at another path; f1: same path with a stale hash; other: neither.
    assert excluded_rows(meta, [ft]).tolist() == [True, False, True]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A pool holding byte-copies of one finetuning and one test image, embedded and indexed with arf:tiny-clip."""
    tmp = tmp_path_factory.mktemp("world")
    ft_root = make_folder_set(tmp / "ft", per_class=2, classes=("red", "blue"))
    test_root = make_folder_set(tmp / "test", per_class=1, classes=("green", "yellow"))
    ft, test = resolve_set(ft_root), resolve_set(test_root)
    leaks = [(ft.abs_path(ft.paths[0]), "a leaked finetuning image"), (test.abs_path(test.paths[0]), "a leaked test")]
    src = make_pool(tmp / "pool", n_per_class=3, extra=leaks)
    emb = tmp / "emb"
    bundle = tiny_bundle()
    embed_pool(PoolConfig(source=str(src), out=str(emb), shard_size=5, progress=False), bundle)
    return {"tmp": tmp, "ft": ft, "test": test, "emb": emb, "bundle": bundle, "n_pool": 14}


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_strategy_never_retrieves_finetuning_or_test_images(strategy: str, world: dict) -> None:
    out = world["tmp"] / f"anchors-{strategy}"
    cfg = RetrieveConfig(emb=str(world["emb"]), images="ft", exclude=[str(world["test"].root)], out=str(out),
                         model="arf:tiny-clip", strategy=strategy, k=50)
    res = retrieve(cfg, images=world["ft"])
    table, meta = load_anchors(out)
    assert table.column_names == ["pool_id", "path", "text", "score", "query_class", "query_label"]
    texts = table.column("text").to_pylist()
    assert not any(t.startswith("a leaked") for t in texts)
    assert res.n_excluded == 2 and res.n_anchors == world["n_pool"] - 2 == table.num_rows   # k large: all the rest
    assert len(set(table.column("pool_id").to_pylist())) == table.num_rows
    assert set(table.column("query_class").to_pylist()) <= {"red", "blue"}
    assert meta["strategy"] == strategy and meta["model"] == "arf:tiny-clip" and meta["k"] == 50
    assert meta["finetune_set"] == "ft" and meta["n_excluded_pool_items"] == 2
    scores = table.column("score").to_pylist()
    assert all(-1.0001 <= s <= 1.0001 for s in scores)


def test_without_exclusion_the_leaked_images_would_be_found(world: dict) -> None:
    other = ImageSet("other", world["tmp"], [], classnames=["red", "blue"])
    cfg = RetrieveConfig(emb=str(world["emb"]), images="other", exclude=[], out=str(world["tmp"] / "leaky"),
                         model="arf:tiny-clip", k=50)
    res = retrieve(cfg, images=other)
    assert res.n_excluded == 0 and res.n_anchors == world["n_pool"]


def test_index_and_exact_search_agree_and_k_is_per_class(world: dict) -> None:
    cfg = RetrieveConfig(emb=str(world["emb"]), images="ft", exclude=[], model="arf:tiny-clip", k=3,
                         out=str(world["tmp"] / "exact"))
    exact = pq.read_table(retrieve(cfg, images=world["ft"]).path)
    build_pool_index(IndexConfig(emb=str(world["emb"]), kind="hnsw"))
    cfg.out = str(world["tmp"] / "indexed")
    indexed = retrieve(cfg, images=world["ft"])
    # A random model may put every pool item nearer "red": an item only ever goes to its best class.
    assert set(indexed.per_class) == {"red", "blue"} and max(indexed.per_class.values()) == 3
    got = pq.read_table(indexed.path)
    assert got.column("pool_id").to_pylist() == exact.column("pool_id").to_pylist()
    assert np.allclose(got.column("score").to_numpy(), exact.column("score").to_numpy(), atol=1e-4)


def test_load_anchors_refuses_other_model_set_or_classes(world: dict) -> None:
    out = world["tmp"] / "anchors-text2image"
    if not out.exists():
        retrieve(RetrieveConfig(emb=str(world["emb"]), images="ft", out=str(out), model="arf:tiny-clip", k=50),
                 images=world["ft"])
    table, _ = load_anchors(out, model_id="arf:tiny-clip", set_name="ft", classnames=["blue", "red"])
    assert table.num_rows > 0
    with pytest.raises(ArfError, match="retrieved with model arf:tiny-clip, not arf:mini-clip"):
        load_anchors(out, model_id="arf:mini-clip")
    with pytest.raises(ArfError, match="for the set ft, not imagenet"):
        load_anchors(out, set_name="imagenet")
    with pytest.raises(ArfError, match="other class names"):
        load_anchors(out, classnames=["red", "blue"])     # same names, another order: another label space


def test_pool_of_another_model_is_refused(world: dict) -> None:
    import json

    info = json.loads((world["emb"] / "embed_info.json").read_text())
    assert info["model"] == "arf:tiny-clip"
    with pytest.raises(ArfError, match="was embedded with arf:tiny-clip"):
        bundle = tiny_bundle()
        bundle.model_id = "arf:other"
        retrieve(RetrieveConfig(emb=str(world["emb"]), images="ft", out=str(world["tmp"] / "x")), bundle=bundle,
                 images=world["ft"])


def test_cli_retrieve_show(world: dict, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["retrieve", "--emb", str(world["emb"]), "--images", str(world["ft"].root), "--exclude",
               str(world["test"].root), "--model", "arf:tiny-clip", "--k", "2", "--show", "2",
               "--out", str(world["tmp"] / "cli")])
    out = capsys.readouterr().out
    assert rc == 0 and "for 2 classes" in out and "2 pool items excluded" in out
    shown = [line.split(maxsplit=1) for line in out.splitlines() if line.startswith("    ")]
    assert shown and all(float(score) > -1 and text.startswith("a ") for score, text in shown)
    assert ("  red:" in out or "  blue:" in out) and len(shown) <= 4
    assert main(["retrieve", "--emb", str(world["emb"]), "--images", "x", "--k", "0"]) == 2
    assert "k: must be > 0" in capsys.readouterr().err


# ------------------------------------------------------------------ the pair floor (LAION's CLIP-score filter)
def test_pair_floor_tests_only_the_matching_paths_and_median_is_the_others() -> None:
    from arf.anchors.retrieve import below_pair_floor

    cosine = np.array([0.1, 0.2, 0.3, 0.05, 0.2, 0.25, 0.19])
    paths = ["/d/pool/emoji/a.png", "/d/pool/emoji/b.png", "/d/pool/emoji/c.png"] + [
        f"/d/pool/openclipart/{i}.png" for i in range(4)]
    below, value = below_pair_floor(cosine, paths, "median", "*/pool/openclipart/*")
    assert value == 0.2                                  # the median of the three trusted pairs
    assert below.tolist() == [False, False, False, True, False, False, True]   # trusted pairs are never tested
    below, value = below_pair_floor(cosine, paths, 0.15, None)                 # a fixed floor on every pair
    assert value == 0.15 and below.tolist() == [True, False, False, True, False, False, False]
    with pytest.raises(ConfigError, match="pair_floor_paths: every pool pair matches"):
        below_pair_floor(cosine, paths, "median", "/d/*")


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_restricted_search_through_the_index_returns_only_allowed_rows(kind: str) -> None:
    import faiss

    from arf.anchors.index import build_index
    from arf.anchors.retrieve import _selector_params, restricted_search

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:20] + 0.1 * rng.normal(size=(20, 16)).astype(np.float32)
    allowed = rng.random(len(x)) < 0.4
    index, _ = build_index(x, IndexConfig(emb="-", kind=kind, exact_below=0, recall_queries=100))
    search, n = restricted_search(index, x, allowed)
    exact, n_exact = restricted_search(None, x, allowed)
    assert n == n_exact == int(allowed.sum())
    _, rows = search(q, 10)
    _, truth = exact(q, 10)
    assert allowed[rows[rows >= 0]].all()              # a filtered row is never returned, whatever the index
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth, strict=True)])
    assert recall == 1.0 if kind == "flat" else recall >= 0.6
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:                                # the tuned nprobe survives the selector's parameters
        params = _selector_params(index, np.flatnonzero(allowed).astype(np.int64))
        assert params.nprobe == ivf.nprobe


def test_retrieve_with_a_pair_floor_never_returns_a_pair_below_it(world: dict) -> None:
    from arf.anchors.pool import load_embeddings
    from arf.anchors.retrieve import pair_cosines

    img, meta = load_embeddings(world["emb"], "image")
    cosine = pair_cosines(img, load_embeddings(world["emb"], "text")[0])
    cos_of = dict(zip(meta.column("pool_id").to_pylist(), cosine.tolist(), strict=True))
    red = [i for i, p in enumerate(meta.column("path").to_pylist()) if "/pool/red_" in p]
    floor = float(np.median(cosine[red]))
    out = world["tmp"] / "pair-floor"
    cfg = RetrieveConfig(emb=str(world["emb"]), images="ft", exclude=[], model="arf:tiny-clip", k=50, out=str(out),
                         pair_floor=floor, pair_floor_paths="*/pool/red_*")
    res = retrieve(cfg, images=world["ft"])
    table, meta_out = load_anchors(out)
    got = table.column("pool_id").to_pylist()
    dropped = {meta.column("pool_id")[i].as_py() for i in red if cosine[i] < floor}
    assert dropped and not dropped & set(got)                                 # the red pairs below the floor
    assert all(cos_of[p] >= floor or "/red_" not in p for p in got)
    assert res.n_anchors == world["n_pool"] - res.n_excluded - len(dropped)   # every other pair still retrieved
    assert meta_out["pair_floor_value"] == pytest.approx(floor) and meta_out["n_below_pair_floor"] == len(dropped)
    assert meta_out["pair_floor_paths"] == "*/pool/red_*"


def test_pair_floor_config_and_flags_are_checked(world: dict, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="pair_floor_paths"):
        RetrieveConfig(emb="e", images="x", pair_floor="median").validate()
    with pytest.raises(ConfigError, match="pair_floor: must be a cosine similarity"):
        RetrieveConfig(emb="e", images="x", pair_floor=1.5).validate()
    with pytest.raises(SystemExit) as exit_:
        main(["retrieve", "--emb", "e", "--images", "x", "--pair-floor", "high"])
    assert exit_.value.code == 2
    assert "'high': give a cosine similarity or 'median'" in capsys.readouterr().err
    out = world["tmp"] / "cli-pair-floor"
    assert main(["retrieve", "--emb", str(world["emb"]), "--images", str(world["ft"].root), "--model",
                 "arf:tiny-clip", "--k", "50", "--pair-floor", "median", "--pair-floor-paths", "*/pool/blue_*",
                 "--out", str(out)]) == 0
    _, meta = load_anchors(out)
    assert meta["pair_floor"] == "median" and meta["n_below_pair_floor"] >= 1
