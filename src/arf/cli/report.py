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
    p.add_argument("--wise-alpha", "--wise-alphas", dest="wise_alpha", default="0.5", metavar="ALPHAS",
                   help="alpha(s) of the WiSE-FT rows in the table: 0.5, a list 0.25,0.5,0.75 or a range 0:1:0.25 "
                        "(α 0 and 1 are the zeroshot and finetuned rows; default: 0.5)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from arf.evaluate.wise import parse_alphas
    from arf.report import build_report, collect_records

    alphas = parse_alphas(args.wise_alpha, field="--wise-alpha")
    result = build_report(collect_records(args.inputs), args.out, metric=args.metric, wise_alphas=alphas)
    print(result.markdown_path.read_text())
    print(f"wrote {result.markdown_path}, {result.csv_path}")
    for name, path in result.plots.items():
        print(f"wrote {path} ({result.curves[name]} WiSE-FT curves)")
    return 0
