"""CLI: ``arf base build`` (align the offline base model arf:mini-clip), ``arf base info``, ``arf base list``."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``base`` with its ``build`` / ``info`` / ``list`` subcommands."""
    p = sub.add_parser("base", help="the base CLIP-like model: build arf:mini-clip, inspect models",
                       description="Build the offline base model arf:mini-clip and inspect model ids.")
    bsub = p.add_subparsers(dest="base_command", metavar="SUBCOMMAND", required=True)

    b = bsub.add_parser("build", help="align EfficientNet-Lite0 + MiniLM into arf:mini-clip (cached, resumable)",
                        description="Contrastively align the two offline towers on the alignment corpus "
                                    "(the offline benchmark's alignment.parquet, else a provisional one); "
                                    "prints the base's zero-shot scores. Reruns are skipped or resumed.")
    b.add_argument("--config", default=None, help="YAML with BaseBuildConfig fields (default: built-in defaults, "
                                                  "as in configs/base/mini-clip.yaml)")
    b.add_argument("--corpus", default=None, help="parquet/CSV of image–text pairs (path, text[, classname]); "
                                                  "default: the offline benchmark's alignment corpus")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set epochs=20 (repeatable)")
    b.add_argument("--force", action="store_true", help="rebuild even if a finished build exists")
    b.add_argument("--no-eval", action="store_true", help="skip the offline benchmark evaluation after building")
    b.set_defaults(func=cmd_build)

    i = bsub.add_parser("info", help="describe a model id or checkpoint (parameters, embedding, preprocess)")
    i.add_argument("model", nargs="?", default="arf:mini-clip", help="model id or checkpoint (default: arf:mini-clip)")
    i.set_defaults(func=cmd_info)

    ls = bsub.add_parser("list", help="list model ids create_model accepts")
    ls.set_defaults(func=cmd_list)


def _suite_evaluator() -> Any:
    """Zero-shot scores of a bundle on every offline benchmark set, if the benchmark and evaluator exist."""
    try:
        from arf.data import get_suite
        from arf.evaluate import evaluate

        suite = get_suite("offline")
    except Exception as e:  # the benchmark is optional for a base build: report why it is skipped
        import logging

        logging.getLogger(__name__).info("offline benchmark not evaluated (%s)", e)
        return None

    def run(bundle: Any) -> dict[str, float]:
        from arf.evaluate import EvalOptions

        records = evaluate(bundle, list(suite), opts=EvalOptions(progress=False))
        return {f"{r.set} [{r.role}]": r.value for r in records if r.metric == "top1"}

    return run


def cmd_build(args: argparse.Namespace) -> int:
    import time

    from arf.config import load_config
    from arf.models.align import BaseBuildConfig, build_base, read_corpus

    cfg = load_config(BaseBuildConfig, args.config, args.overrides)
    pairs = read_corpus(args.corpus) if args.corpus else None
    t0 = time.time()
    result = build_base(pairs, cfg, provisional=False if pairs is not None else None,
                        force=args.force, evaluate=None if args.no_eval else _suite_evaluator())
    print(f"arf:mini-clip -> {result.out_dir}  ({'PROVISIONAL corpus, ' if result.provisional else ''}"
          f"built in {result.seconds:.0f} s; this command {time.time() - t0:.0f} s)")
    if result.scores:
        width = max(len(k) for k in result.scores)
        print(f"{'zero-shot top-1':<{width}}  %")
        for k, v in result.scores.items():
            print(f"{k:<{width}}  {v:5.1f}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from arf.models import create_model

    b = create_model(args.model)
    n = sum(p.numel() for p in b.model.parameters())
    info = {k: v for k, v in b.info.items() if k not in ("hf_config",)}
    print(f"model: {b.model_id}\nparameters: {n / 1e6:.2f}M\nembedding dim: {b.embed_dim}")
    print(json.dumps(info, indent=1, default=str))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from arf.models import list_models

    print("\n".join(list_models()))
    return 0
