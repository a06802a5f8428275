"""The ``arf`` command: a thin face over the library. Each submodule registers its subcommands.

Subcommand modules import torch and friends inside their handlers, so ``arf --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from arf import __version__
from arf.errors import ArfError

# One module per stage; each defines ``register(subparsers)``.
COMMAND_MODULES = ("base", "data", "evaluate", "anchors", "train", "wise_probe", "report", "demo")


# Libraries whose INFO messages are noise in a stage's log (see main).
QUIET_LOGGERS = ("faiss",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arf", description="Anchor-based robust finetuning (ARF) of CLIP-like models, with peer baselines."
    )
    parser.add_argument("--version", action="version", version=f"arf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"arf.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # faiss's loader logs at INFO that its AVX2 build "could not load … ModuleNotFoundError" before it falls back to
    # the generic build, which works: read as an error by users, so third-party INFO lines show only with -v.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except ArfError as e:
        print(f"arf: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
