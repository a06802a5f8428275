"""CLI: ``arf report`` — records (files or run folders) → markdown table, CSV and WiSE-FT plots."""

from __future__ import annotations

import argparse

from arf.errors import ConfigError


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
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="show method OLD as NEW (repeatable, or comma-separated; applied at once, so names can swap; "
                        "the records files are not changed)")
    p.add_argument("--merge-seeds", action="store_true",
                   help="treat methods named <name>-s<seed> (recorded with that seed) as replicates of <name>, "
                        "before --rename (scripts/offline_variant.sh names its runs so)")
    p.add_argument("--methods", metavar="M1,M2", help="only these methods (after --rename); zeroshot is always kept "
                                                      "as the start of the WiSE-FT curves")
    p.set_defaults(func=cmd_report)


def parse_renames(items: list[str]) -> dict[str, str]:
    """``["a=b", "c=d,e=f"]`` → ``{"a": "b", "c": "d", "e": "f"}``; a malformed pair names the flag."""
    renames: dict[str, str] = {}
    for pair in (x.strip() for item in items for x in item.split(",") if x.strip()):
        old, sep, new = (part.strip() for part in pair.partition("="))
        if not sep or not old or not new:
            raise ConfigError(f"--rename: {pair!r} must look like OLD=NEW")
        if old in renames:
            raise ConfigError(f"--rename: method {old!r} is renamed twice")
        renames[old] = new
    return renames


def cmd_report(args: argparse.Namespace) -> int:
    from arf.evaluate.wise import parse_alphas
    from arf.report import build_report, collect_records, merge_seed_names, rename_methods, select_methods

    alphas = parse_alphas(args.wise_alpha, field="--wise-alpha")
    records = collect_records(args.inputs)
    if args.merge_seeds:
        records = merge_seed_names(records)
    records = rename_methods(records, parse_renames(args.rename))
    if args.methods:
        records = select_methods(records, [m.strip() for m in args.methods.split(",") if m.strip()])
    result = build_report(records, args.out, metric=args.metric, wise_alphas=alphas)
    print(result.markdown_path.read_text())
    print(f"wrote {result.markdown_path}, {result.csv_path}")
    for name, path in result.plots.items():
        print(f"wrote {path} ({result.curves[name]} WiSE-FT curves)")
    return 0
