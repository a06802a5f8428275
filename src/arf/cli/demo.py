"""CLI: ``arf demo`` — every stage on the embedded offline default, cached."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``arf demo``."""
    p = sub.add_parser("demo", help="run the whole experiment on the embedded offline default (cached)")
    p.add_argument("--full", action="store_true",
                   help="the full protocol of docs/RESULTS.md (all methods, ablations, 3 seeds) instead of the "
                        "laptop one")
    p.add_argument("--config", default=None, help="a demo YAML (default: configs/demo/small.yaml or full.yaml)")
    p.add_argument("--out", default=None, help="run folder (default: runs/demo)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override demo config fields, e.g. --set seeds=[0,1] methods=[ft,arf]")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from arf.demo import load_demo_config, run_demo

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    cfg = load_demo_config(full=args.full, path=args.config, overrides=overrides)
    run_demo(cfg)
    return 0
