"""Issue 6's target, seed by seed: is a method ≥ MARGIN points over every peer on the domain-shift and zero-shot
averages, at ID within ID_WITHIN points of the best peer?

The peers are the plain peer models (``--peers``: the best of them per column) and the WiSE-FT points of
``--wise`` methods (records with 0 < α < 1) whose ID is within ID_WITHIN of the best peer ID — a WiSE-FT point far
below in ID would otherwise set the shift and zero-shot bars at an ID nobody would deploy (the convention of
docs/RESULTS.md §2, sixteenth session). Records may come from several files; a method named ``<name>-s<seed>``
(``scripts/offline_variant.sh`` runs) counts as ``<name>``.

    python scripts/target_check.py runs/offline-results/records.jsonl --method arf
    python scripts/target_check.py runs/sweep-s17/records.jsonl runs/sweep-s17/wise-peers.jsonl \\
        --method arf-wlp-a0.7-pt0.2 --peers lp,lpft,ft,flyp --wise ft,flyp
"""

from __future__ import annotations

import argparse

from arf.evaluate.records import Record, averages_by_run
from arf.report import collect_records, seedless_method

ID, SHIFT, ZS = "ID", "OOD avg", "zero-shot avg"


# ``arf-s1`` with seed 1 -> ``arf`` (offline_variant.sh's run names); kept under this name for the script's callers.
base_method = seedless_method


def averages(records: list[Record], metric: str) -> dict[tuple[str, float | None, int | None], dict[str, float]]:
    """(method, α rounded, seed) -> role averages; only evaluations that have all three columns. A run with no
    α-unset records is its α = 1 sweep point (``arf demo`` evaluates the finetuned models only in their sweep), as
    in the report (:func:`arf.report.tables.endpoint_records`)."""
    avg = {key: avg for key, avg in averages_by_run(records, metric, base_method).items()
           if all(c in avg for c in (ID, SHIFT, ZS))}
    for (m, a, s), v in list(avg.items()):
        if a == 1.0:
            avg.setdefault((m, None, s), v)
    return avg


def check_seed(avg: dict, method: str, seed: int, peers: list[str], wise: list[str], margin: float,
               id_within: float) -> dict | None:
    """The three parts for one seed, or None where the method or every peer lacks that seed."""
    mine = avg.get((method, None, seed))
    plain = {p: avg[(p, None, seed)] for p in peers if (p, None, seed) in avg}
    if mine is None or not plain:
        return None
    best_id = max(v[ID] for v in plain.values())
    points = {f"{m}@{a:g}": v for (m, a, s), v in avg.items()
              if s == seed and m in wise and a is not None and 0 < a < 1 and v[ID] >= best_id - id_within}
    rivals = {**plain, **points}
    by_shift = max(rivals, key=lambda k: rivals[k][SHIFT])
    by_zs = max(rivals, key=lambda k: rivals[k][ZS])
    parts = {
        "ID": (mine[ID] - best_id, mine[ID] - best_id >= -id_within, max(plain, key=lambda k: plain[k][ID])),
        "shift": (mine[SHIFT] - rivals[by_shift][SHIFT], mine[SHIFT] - rivals[by_shift][SHIFT] >= margin, by_shift),
        "zero-shot": (mine[ZS] - rivals[by_zs][ZS], mine[ZS] - rivals[by_zs][ZS] >= margin, by_zs),
    }
    return {"mine": mine, "parts": parts, "missing": [p for p in peers if p not in plain]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="+")
    ap.add_argument("--method", required=True, help="the method checked (its plain records, α unset)")
    ap.add_argument("--peers", default="lp,lpft,ft,flyp", help="comma-separated peer methods")
    ap.add_argument("--wise", default="ft,flyp", help="methods whose WiSE-FT points are peers too ('' for none)")
    ap.add_argument("--margin", type=float, default=2.0)
    ap.add_argument("--id-within", type=float, default=1.0)
    ap.add_argument("--metric", default="top1")
    args = ap.parse_args(argv)
    avg = averages(collect_records(args.records), args.metric)
    peers = [p for p in args.peers.split(",") if p]
    wise = [w for w in args.wise.split(",") if w]
    seeds = sorted({s for (m, a, s) in avg if m == args.method and a is None and s is not None})
    if not seeds:
        raise SystemExit(f"no records of {args.method} with a seed and all three roles in {', '.join(args.records)}")
    print(f"| seed | {args.method} (ID / OOD avg / zero-shot avg) | ID − best peer | shift − best "
          "| zero-shot − best | met |")
    print("|---|---|---|---|---|---|")
    met = checked = 0
    for seed in seeds:
        res = check_seed(avg, args.method, seed, peers, wise, args.margin, args.id_within)
        if res is None:
            print(f"| {seed} | – | no peer records for this seed | | | |")
            continue
        checked += 1
        ok = all(p[1] for p in res["parts"].values())
        met += ok
        cells = [f"{d:+.2f} ({who}){'' if good else ' ✗'}" for d, good, who in res["parts"].values()]
        mine = " / ".join(f"{res['mine'][c]:.1f}" for c in (ID, SHIFT, ZS))
        print(f"| {seed} | {mine} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")
        if res["missing"]:
            print(f"|   | (no records of {', '.join(res['missing'])} in this seed) | | | | |")
    print(f"\ntarget (≥ {args.margin:g} on shift and zero-shot, ID within {args.id_within:g}): met in {met} of "
          f"{checked} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
