"""Do the val splits rank finetuned models as the test sets do? Rank correlations from eval records files.

A val split is only worth choosing settings on if it orders models roughly as the test averages it stands for.
Per finetuned model (method, seed; WiSE-FT records left out) this reads val (role ``val``), the shift and zero-shot
val averages (roles ``val-shift``, ``val-zeroshot``) and the test ID / OOD / zero-shot averages, then prints the
per-method means and the Spearman correlation of each val column with each test average over the models that
have both. Records of one model may come from several files (the val splits evaluated later, into another file).
``--sets A,B`` adds the named sets as val columns of their own (one val split read apart from its role's average).

    python scripts/val_vs_test.py runs/offline-results-r9/records.jsonl runs/valsplits.jsonl --sets val-shift-unseen
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from arf.evaluate.records import dedupe, read_records, role_averages

VAL_COLUMNS = ("val", "shift val avg", "zero-shot val avg")
TEST_COLUMNS = ("ID", "OOD avg", "zero-shot avg")


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties given their mean rank (as Spearman's correlation needs)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom else float("nan")


def model_columns(paths: list[str], metric: str = "top1",
                  sets: tuple[str, ...] = ()) -> dict[tuple[str, int | None], dict[str, float]]:
    """``{(method, seed): {column: value}}`` for every finetuned model in the files (val = mean of its val sets;
    each set named in ``sets`` a column of its own)."""
    groups = defaultdict(list)
    for path in paths:
        for r in read_records(path):
            if r.metric == metric and r.alpha is None and r.method != "zeroshot":
                groups[(r.method, r.seed)].append(r)
    out = {}
    for key, recs in groups.items():
        recs = dedupe(recs)
        cols = role_averages(recs, metric)
        val = [r.value for r in recs if r.role == "val"]
        if val:
            cols["val"] = sum(val) / len(val)
        cols.update({r.set: r.value for r in recs if r.set in sets})
        out[key] = cols
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+")
    ap.add_argument("--metric", default="top1")
    ap.add_argument("--sets", default="", help="comma-separated set names to rank as val columns of their own")
    args = ap.parse_args()

    extra = tuple(s.strip() for s in args.sets.split(",") if s.strip())
    models = model_columns(args.records, args.metric, extra)
    if not models:
        raise SystemExit(f"no finetuned-model records in {', '.join(args.records)}")
    val_columns = (*VAL_COLUMNS, *extra)
    cols = [c for c in (*val_columns, *TEST_COLUMNS) if any(c in m for m in models.values())]
    by_method = defaultdict(list)
    for (method, _), m in models.items():
        by_method[method].append(m)
    print("| method | models | " + " | ".join(cols) + " |")
    print("|---|---:" + "|---:" * len(cols) + "|")
    for method in sorted(by_method):
        ms = by_method[method]
        cells = [np.mean([m[c] for m in ms if c in m]) if any(c in m for m in ms) else float("nan") for c in cols]
        print(f"| {method} | {len(ms)} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")
    print()
    for v in val_columns:
        for t in TEST_COLUMNS:
            both = [m for m in models.values() if v in m and t in m]
            if len(both) >= 3:
                rho = spearman(np.array([m[v] for m in both]), np.array([m[t] for m in both]))
                shown = "undefined (a column without spread)" if np.isnan(rho) else f"{rho:+.2f}"
                print(f"Spearman({v}, {t}) = {shown} over {len(both)} models")


if __name__ == "__main__":
    main()
