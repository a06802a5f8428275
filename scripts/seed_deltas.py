"""Per-seed differences of one method against its peers: ID / OOD avg / zero-shot avg, from an eval records file.

Means over seeds hide whether a gain holds in every seed; docs/RESULTS.md quotes this table next to the means.

    python scripts/seed_deltas.py runs/offline-results-bnfrozen/records.jsonl --method arf --peers ft,flyp,lp,lpft
    python scripts/seed_deltas.py RECORDS --method arf@0.5 --peers ft@0.5,flyp@0.5   # WiSE-FT rows (method@alpha)
"""

from __future__ import annotations

import argparse

from arf.evaluate.records import alpha_key, averages_by_run, read_records

COLUMNS = ("ID", "OOD avg", "zero-shot avg")


def parse_row(spec: str) -> tuple[str, float | None]:
    name, _, alpha = spec.partition("@")
    return name, alpha_key(float(alpha)) if alpha else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records")
    ap.add_argument("--method", default="arf", help="method[@alpha] whose differences are shown")
    ap.add_argument("--peers", default="ft,flyp,lp,lpft", help="comma-separated method[@alpha] list")
    ap.add_argument("--metric", default="top1")
    args = ap.parse_args()

    averages = averages_by_run(read_records(args.records), args.metric)
    target = parse_row(args.method)
    peers = [parse_row(p) for p in args.peers.split(",") if p]
    seeds = sorted({seed for (m, a, seed) in averages if (m, a) == target and seed is not None})
    if not seeds:
        raise SystemExit(f"no records of {args.method} in {args.records}")

    def fmt(v: dict[str, float]) -> str:
        return " / ".join(f"{v[c]:.1f}" for c in COLUMNS)

    print("| seed | " + args.method + " | " + " | ".join(f"− {p}" for p in args.peers.split(",")) + " |")
    print("|---" * (2 + len(peers)) + "|")
    for seed in seeds:
        mine = averages[(*target, seed)]
        cells = []
        for peer in peers:
            other = averages.get((*peer, seed))
            cells.append("–" if other is None else " / ".join(f"{mine[c] - other[c]:+.1f}" for c in COLUMNS))
        print(f"| {seed} | {fmt(mine)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
