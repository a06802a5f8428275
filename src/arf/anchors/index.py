"""``arf pool index``: a FAISS inner-product index over unit-norm pool embeddings, with its infos JSON.

Choice (``kind="auto"``, in the spirit of autofaiss):

- fewer than ``exact_below`` vectors: ``IndexFlatIP`` — exact, and at that size a scan is already fast;
- else, if the raw float32 vectors fit ``max_memory_gb``: ``IVF{nlist},Flat`` with ``nlist ≈ 4·sqrt(n)``
  (capped so every list gets ≥ 39 training points) — full-precision vectors, so recall is limited only by nprobe;
- else ``IVF{nlist},PQ{m}`` with the largest ``m`` (dividing ``dim``, ≤ dim/2) whose codes fit the budget.

``hnsw`` (``HNSW32,Flat``) and the others can be forced with ``kind``. After building, the search parameter
(``nprobe`` or ``efSearch``) is raised along 1, 2, 4, ... until recall@k against an exact scan on a sample of
queries reaches ``target_recall``, then bisected down to the smallest value that still reaches it; the chosen
value and the measured recall are stored in the infos, and ``load_index`` applies them. For the image index the
sample queries are pool *text* embeddings, the direction ``text2image`` retrieval uses.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arf.anchors.config import IndexConfig
from arf.errors import InputFileError
from arf.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)


@dataclass
class IndexInfo:
    kind: str
    factory: str
    n: int
    dim: int
    build_time_s: float
    memory_bytes: int
    search_param: str | None       # "nprobe" | "efSearch" | None (exact)
    search_value: int | None
    recall_k: int
    recall: float                  # measured recall@k vs exact on `recall_queries` queries
    recall_queries: int
    target_recall: float


def choose_factory(n: int, dim: int, cfg: IndexConfig) -> tuple[str, str]:
    """(kind, FAISS factory string) for ``n`` vectors of ``dim`` under ``cfg``."""
    kind = cfg.kind
    budget = cfg.max_memory_gb * 1024**3
    if kind == "auto":
        if n < cfg.exact_below:
            kind = "flat"
        elif n * dim * 4 <= budget:
            kind = "ivf"
        else:
            kind = "ivfpq"
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    if kind == "flat":
        return kind, "Flat"
    if kind == "ivf":
        return kind, f"IVF{nlist},Flat"
    if kind == "hnsw":
        return kind, "HNSW32,Flat"
    divisors = [m for m in range(1, dim // 2 + 1) if dim % m == 0 and m <= 64]
    fitting = [m for m in divisors if n * (m + 8) <= budget]  # m code bytes + 8-byte id per vector
    return kind, f"IVF{nlist},PQ{max(fitting or divisors[:1])}"


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def _set_param(index: Any, name: str | None, value: int | None) -> None:
    import faiss

    if name is None or value is None:
        return
    faiss.ParameterSpace().set_index_parameter(index, name, value)


def build_index(x: np.ndarray, cfg: IndexConfig, queries: np.ndarray | None = None) -> tuple[Any, IndexInfo]:
    """Build the index ``cfg`` asks for over rows ``x`` and tune/measure it on ``queries`` (default: rows of x)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    kind, factory = choose_factory(n, dim, cfg)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        if hasattr(ivf, "do_polysemous_training"):
            # The factory turns on polysemous code reordering (minutes of annealing); we never search in Hamming.
            ivf.do_polysemous_training = False
        nlist = ivf.nlist
        # 64 points per list is plenty for k-means centroids (FAISS wants >= 39) and keeps training at 1M x 256
        # in minutes on a laptop instead of the hour that FAISS's default 256 per list would take.
        n_train = min(n, max(64 * nlist, 10_000))
        index.train(x[rng.choice(n, n_train, replace=False)] if n_train < n else x)
    index.add(x)
    build_time = time.perf_counter() - t0

    if queries is None:
        queries = x
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    q = queries[rng.choice(len(queries), min(cfg.recall_queries, len(queries)), replace=False)]
    k = min(cfg.recall_k, n)
    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    _, truth = exact.search(q, k)

    param = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch"}.get(kind)
    value, recall = None, 1.0
    if param is not None:
        limit = faiss.extract_index_ivf(index).nlist if param == "nprobe" else 4096

        def measure(v: int) -> float:
            _set_param(index, param, v)
            return _recall(index.search(q, k)[1], truth)

        value = 1 if param == "nprobe" else max(16, k)
        recall = measure(value)
        while recall < cfg.target_recall and value < limit:
            lo, value = value, min(value * 2, limit)
            recall = measure(value)
            if recall >= cfg.target_recall:
                # Doubling overshoots by up to 2x the search cost: bisect down to the smallest value that passes.
                lo += 1
                while lo < value:
                    mid = (lo + value) // 2
                    r = measure(mid)
                    if r >= cfg.target_recall:
                        value, recall = mid, r
                    else:
                        lo = mid + 1
                break
        _set_param(index, param, value)
        if recall < cfg.target_recall:
            log.warning("index %s reaches recall@%d %.3f < target %.3f at %s=%d", factory, k, recall,
                        cfg.target_recall, param, value)
    else:
        _, found = index.search(q, k)
        recall = _recall(found, truth)
    memory = _index_bytes(index)
    info = IndexInfo(kind, factory, n, dim, round(build_time, 3), memory, param, value, k, round(recall, 4), len(q),
                     cfg.target_recall)
    tuned = f", {param}={value}" if param else ""  # exact indexes (Flat) have no search parameter
    log.info("index %s: %d x %d, built in %.1fs%s, recall@%d=%.3f", factory, n, dim, build_time, tuned, k, recall)
    return index, info


def _index_bytes(index: Any) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def save_index(index: Any, info: IndexInfo, path: str | Path) -> None:
    import faiss

    path = Path(path)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    write_json(path.with_suffix(".infos.json"), asdict(info))


def load_index(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """An index saved by :func:`save_index`, with its tuned search parameter applied."""
    import faiss

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"index not found: {path}; run `arf pool index` first")
    index = faiss.read_index(str(path))
    infos = read_json(path.with_suffix(".infos.json"))
    _set_param(index, infos.get("search_param"), infos.get("search_value"))
    return index, infos


def index_path(emb_dir: str | Path, modality: str, out: str | Path | None = None) -> Path:
    return Path(out or Path(emb_dir) / "index") / f"{modality}.faiss"


def build_pool_index(cfg: IndexConfig) -> dict[str, IndexInfo]:
    """Index the image and/or text embeddings of a pool embedding folder."""
    from arf.anchors.pool import load_embeddings

    cfg.validate()
    modalities = ["image", "text"] if cfg.modality == "both" else [cfg.modality]
    texts, _ = load_embeddings(cfg.emb, "text")
    infos = {}
    for m in modalities:
        x = texts if m == "text" else load_embeddings(cfg.emb, "image")[0]
        index, info = build_index(x, cfg, queries=texts)
        path = index_path(cfg.emb, m, cfg.out)
        save_index(index, info, path)
        log.info("pool %s index -> %s", m, path)
        infos[m] = info
    return infos
