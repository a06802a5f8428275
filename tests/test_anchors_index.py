"""FAISS index choice, approximate recall vs exact on clustered data, save/load of the tuned search parameter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from arf.anchors.config import IndexConfig
from arf.anchors.index import build_index, choose_factory, load_index, save_index


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int = 0) -> np.ndarray:
    """Unit vectors from a mixture of Gaussian clusters on the sphere (like real CLIP embeddings, unlike uniform)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_choice_by_size_and_memory_budget() -> None:
    cfg = IndexConfig(emb="e")
    assert choose_factory(5_000, 256, cfg) == ("flat", "Flat")
    assert choose_factory(1_000_000, 256, cfg) == ("ivf", "IVF4000,Flat")
    kind, factory = choose_factory(1_000_000, 256, IndexConfig(emb="e", max_memory_gb=0.5))  # 1 GB of floats
    assert kind == "ivfpq" and factory == "IVF4000,PQ64"
    kind, factory = choose_factory(10_000_000, 256, IndexConfig(emb="e", max_memory_gb=0.2))
    assert factory.startswith("IVF12649,PQ") and 10_000_000 * (int(factory.split("PQ")[1]) + 8) <= 0.2 * 1024**3
    assert choose_factory(1000, 64, IndexConfig(emb="e", kind="hnsw")) == ("hnsw", "HNSW32,Flat")


def test_approximate_recall_at_10_vs_exact_default_settings() -> None:
    x = clustered(50_000, 64, 100, spread=0.35)
    q = clustered(500, 64, 100, spread=0.35, seed=1)       # fresh queries from the same mixture
    index, info = build_index(x, IndexConfig(emb="e", exact_below=10_000), queries=q)   # forced approximate
    assert info.kind == "ivf" and info.factory.startswith("IVF") and info.search_param == "nprobe"
    # Recall re-measured independently of the tuning sample, against a brute-force numpy scan.
    q2 = clustered(300, 64, 100, spread=0.35, seed=2)
    truth = np.argsort(-(q2 @ x.T), axis=1)[:, :10]
    _, found = index.search(q2, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95 and info.recall >= 0.95
    assert info.search_value < faiss_nlist(index)          # faster than scanning every list


def faiss_nlist(index: object) -> int:
    import faiss

    return faiss.extract_index_ivf(index).nlist


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_save_load_keeps_the_tuned_search_parameter(kind: str, tmp_path: Path) -> None:
    x = clustered(3_000, 16, 20, spread=0.3)
    index, info = build_index(x, IndexConfig(emb="e", kind=kind, recall_queries=100))
    save_index(index, info, tmp_path / "image.faiss")
    loaded, infos = load_index(tmp_path / "image.faiss")
    assert infos["factory"] == info.factory and infos["n"] == 3_000 and infos["dim"] == 16
    assert infos["build_time_s"] >= 0 and 0 <= infos["recall"] <= 1
    _, i1 = index.search(x[:20], 5)
    _, i2 = loaded.search(x[:20], 5)
    assert np.array_equal(i1, i2)
    if kind in ("flat", "ivf", "hnsw"):                      # full-precision vectors: the self-match comes first
        assert (i2[:, 0] == np.arange(20)).mean() >= 0.95
