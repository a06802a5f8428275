"""Retrieval and pool-embedding benchmarks of the anchor stages (results go to docs/BENCHMARKS.md).

``synthetic``: N unit vectors drawn like CLIP embeddings — a mixture of Gaussian clusters on the sphere (uniform
vectors have no neighbourhood structure, so no index beats a scan on them) — and fresh queries from the same
mixture; exact numpy scan vs exact FAISS (IndexFlatIP) vs the default approximate index of ``arf pool index``
(``kind=auto`` forced past ``exact_below``), with build time, queries/s and recall@k against the exact answer.
``--spread`` is the noise norm relative to the centre (0.5: clear clusters; 1.0: heavily overlapping).

``pool``: the same comparison on a real pool embedding folder (``arf pool embed``): image index, text queries.

``embed``: ``arf pool embed`` throughput vs the bare model forward on the same, already preprocessed batches.

    python benchmarks/bench_retrieval.py synthetic --n 1000000 --dim 256 --clusters 1000 --spread 0.5
    python benchmarks/bench_retrieval.py pool --emb ~/.cache/arf/data/offline/v1/pool_emb
    python benchmarks/bench_retrieval.py embed --source ~/.cache/arf/data/offline/v1/pool.parquet --model arf:mini-clip
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int, centre_seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (fixed by ``centre_seed``); noise norm ≈ ``spread``."""
    centres = np.random.default_rng(centre_seed).standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # in blocks: 1M x 256 float64 noise would be 2 GB
        m = min(100_000, n - s)
        noise = rng.standard_normal((m, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        out[s:s + m] = centres[rng.integers(0, clusters, m)] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int, block: int = 100) -> np.ndarray:
    out = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), block):
        sims = q[s:s + block] @ x.T
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, idx, 1), axis=1)
        out[s:s + block] = np.take_along_axis(idx, order, 1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def compare(x: np.ndarray, q: np.ndarray, k: int, threads: int) -> list[dict[str, Any]]:
    import faiss

    from arf.anchors.config import IndexConfig
    from arf.anchors.index import build_index

    faiss.omp_set_num_threads(threads)
    rows = []
    t0 = time.perf_counter()
    truth = numpy_topk(x, q, k)
    t_np = time.perf_counter() - t0
    rows.append({"method": "numpy scan (exact)", "build_s": 0.0, "qps": len(q) / t_np, "recall": 1.0})

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, found = flat.search(q, k)
    rows.append({"method": "FAISS IndexFlatIP (exact)", "build_s": build, "qps": len(q) / (time.perf_counter() - t0),
                 "recall": recall(found, truth)})

    cfg = IndexConfig(emb="-", exact_below=min(100_000, len(x) - 1))   # defaults, past the exact threshold
    # Tune on other queries than the measured ones (`arf pool index` tunes on a sample of the pool's texts).
    tune_q = x[np.random.default_rng(123).choice(len(x), 500, replace=False)]
    index, info = build_index(x, cfg, queries=tune_q)
    t0 = time.perf_counter()
    _, found = index.search(q, k)
    rows.append({"method": f"default: {info.factory} ({info.search_param}={info.search_value})",
                 "build_s": info.build_time_s, "qps": len(q) / (time.perf_counter() - t0),
                 "recall": recall(found, truth), "memory_mb": info.memory_bytes / 2**20})
    for r in rows:
        r["speedup_vs_numpy"] = r["qps"] / rows[0]["qps"]
    return rows


def print_table(title: str, rows: list[dict[str, Any]], k: int) -> None:
    print(f"\n### {title}\n")
    print(f"| method | build s | queries/s | × numpy | recall@{k} |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['build_s']:.1f} | {r['qps']:.0f} | {r['speedup_vs_numpy']:.1f} | "
              f"{r['recall']:.3f} |")


def cmd_synthetic(a: argparse.Namespace) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    x = clustered(a.n, a.dim, a.clusters, a.spread, seed=1)
    q = clustered(a.queries, a.dim, a.clusters, a.spread, seed=2)   # fresh draws from the same mixture
    print(f"data: {a.n} x {a.dim}, {a.clusters} clusters, spread {a.spread} ({time.perf_counter() - t0:.1f}s)",
          file=sys.stderr)
    rows = compare(x, q, a.k, a.threads)
    print_table(f"synthetic {a.n:,} x {a.dim}, {a.clusters} clusters, spread {a.spread}, {a.queries} queries, "
                f"top-{a.k}", rows, a.k)
    return rows


def cmd_pool(a: argparse.Namespace) -> list[dict[str, Any]]:
    from arf.anchors.pool import load_embeddings

    x, _ = load_embeddings(a.emb, "image")
    t, _ = load_embeddings(a.emb, "text")
    rng = np.random.default_rng(0)
    q = t[rng.choice(len(t), min(a.queries, len(t)), replace=False)]
    k = min(a.k, len(x))
    rows = compare(x, q, k, a.threads)
    print_table(f"pool {a.emb}: {len(x):,} x {x.shape[1]} image embeddings, {len(q)} text queries, top-{k}", rows, k)
    return rows


def cmd_embed(a: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from arf.anchors.config import PoolConfig
    from arf.anchors.encode import load_bundle, preprocess_batch
    from arf.anchors.pool import embed_pool, iter_pool
    from arf.images import open_image

    torch.set_num_threads(a.threads)
    bundle = load_bundle(a.model)
    recs = list(iter_pool(a.source))[: a.n]
    root = Path(a.source).resolve().parent
    src = Path(tempfile.mkdtemp()) / "pool.csv"   # the first n pairs, paths relative to the pool's folder
    src.write_text("path,text\n" + "".join(
        f"{os.path.relpath(r.ref, root)},\"{r.text.replace(chr(34), '')}\"\n" for r in recs))
    # Bare forward: the same batches, decoded and preprocessed beforehand, through the two towers only.
    pix = preprocess_batch(bundle, [open_image(r.ref) for r in recs])
    tok = bundle.tokenizer([r.text for r in recs])
    bundle.model.eval()

    def bare() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for s in range(0, len(recs), a.batch_size):
                bundle.model.encode_image(pix[s:s + a.batch_size], normalize=True)
                bundle.model.encode_text(tok[s:s + a.batch_size], normalize=True)
            return len(recs) / (time.perf_counter() - t0)

    def pipeline() -> float:
        out = Path(tempfile.mkdtemp()) / "emb"
        t0 = time.perf_counter()
        embed_pool(PoolConfig(source=str(src), root=str(root), out=str(out), batch_size=a.batch_size,
                              num_workers=a.workers, shard_size=max(1, len(recs) // 4), progress=False), bundle)
        return len(recs) / (time.perf_counter() - t0)   # wall clock, everything included

    bare()  # warm-up
    # Alternate the two on a shared machine so that load changes hit both; report medians.
    runs = [(bare(), pipeline()) for _ in range(a.repeats)]
    b_med = float(np.median([r[0] for r in runs]))
    p_med = float(np.median([r[1] for r in runs]))
    rows = [{"method": "bare forward (preprocessed tensors)", "pairs_per_s": b_med, "runs": [r[0] for r in runs]},
            {"method": f"arf pool embed (workers={a.workers}; read, decode, sha256, preprocess, forward, write)",
             "pairs_per_s": p_med, "runs": [r[1] for r in runs]}]
    print(f"\n### pool embed, {a.model}, {len(recs)} pairs, batch {a.batch_size}, median of {a.repeats}\n")
    print("| pipeline | pairs/s (median) | runs | × bare |\n|---|---:|---|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['pairs_per_s']:.1f} | {', '.join(f'{x:.1f}' for x in r['runs'])} | "
              f"{r['pairs_per_s'] / b_med:.2f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--n", type=int, default=1_000_000)
    s.add_argument("--dim", type=int, default=256)
    s.add_argument("--clusters", type=int, default=1000)
    s.add_argument("--spread", type=float, default=0.5)
    r = sub.add_parser("pool")
    r.add_argument("--emb", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--source", required=True)
    e.add_argument("--model", default="arf:mini-clip")
    e.add_argument("--n", type=int, default=512)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, default=0)
    e.add_argument("--repeats", type=int, default=3)
    for x in (s, r, e):
        x.add_argument("--threads", type=int, default=2)
        x.add_argument("--json", help="append result rows as JSON lines here")
    for x in (s, r):
        x.add_argument("--queries", type=int, default=1000)
        x.add_argument("--k", type=int, default=50)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from arf.provenance import cpu_model

    rows = {"synthetic": cmd_synthetic, "pool": cmd_pool, "embed": cmd_embed}[a.cmd](a)
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores visible, "
          f"threads={a.threads}; command: python benchmarks/bench_retrieval.py {' '.join(argv or sys.argv[1:])}")
    if a.json:
        with open(a.json, "a") as f:
            for row in rows:
                f.write(json.dumps({"bench": a.cmd, **vars(a), **row}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
