"""CLI: ``arf report`` — records (files or run folders) → markdown table, CSV and WiSE-FT plots."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report``."""
    p = sub.add_parser("report", help="tables and WiSE-FT plots from evaluation records",
                       description="Reads records.jsonl files (or folders holding *records*.jsonl) and writes "
                                   "results.md, results.csv, summary.json and wise_id_vs_*.png into --out.")
    p.add_argument("inputs", nargs="+", help="records JSONL files or run folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--metric", default="top1", choices=("top1", "top5"), help="metric to tabulate (default: top1)")
    p.add_argument("--wise-alpha", type=float, default=0.5,
                   help="alpha of the WiSE-FT rows in the table (default: 0.5)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from arf.config import check
    from arf.report import build_report, collect_records

    check(0.0 <= args.wise_alpha <= 1.0, "--wise-alpha", f"must be in [0, 1], got {args.wise_alpha}")
    result = build_report(collect_records(args.inputs), args.out, metric=args.metric, wise_alpha=args.wise_alpha)
    print(result.markdown_path.read_text())
    print(f"wrote {result.markdown_path}, {result.csv_path}")
    for name, path in result.plots.items():
        print(f"wrote {path} ({result.curves[name]} WiSE-FT curves)")
    return 0
