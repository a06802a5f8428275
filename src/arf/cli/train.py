"""CLI: ``arf train`` (every method; one process or ``torchrun --nproc_per_node N -m arf.cli train ...``)."""

from __future__ import annotations

import argparse

from arf.method_names import METHOD_NAMES


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    p = sub.add_parser("train", help=f"finetune a CLIP-like model ({', '.join(METHOD_NAMES)})",
                       description="Train with a YAML config (configs/offline/<method>.yaml); flags and --set "
                       "override its fields. Writes config.yaml, metrics.jsonl, checkpoints/ and final/ in "
                       "out_dir/name.")
    p.add_argument("--config", help="YAML file with TrainConfig fields")
    p.add_argument("--method", help=" | ".join(METHOD_NAMES))
    p.add_argument("--model", help="model id or checkpoint folder (arf:mini-clip, openclip:ViT-B-16@openai, ...)")
    p.add_argument("--out-dir", dest="out_dir", help="parent folder of the run folder")
    p.add_argument("--name", help="run folder name (default: the method)")
    p.add_argument("--resume", metavar="latest|CHECKPOINT", help="continue from the newest checkpoint of the run "
                   "folder (latest) or from a checkpoint folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any TrainConfig field, e.g. --set lr=1e-5 (repeatable)")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import logging
    import os

    from arf.config import load_config
    from arf.train import TrainConfig, train

    rank = int(os.environ.get("RANK", 0))
    if rank != 0:  # under torchrun only rank 0 reports progress
        logging.getLogger().setLevel(logging.WARNING)

    flags = [f"{k}={v}" for k, v in (("method", args.method), ("model", args.model), ("out_dir", args.out_dir),
                                    ("name", args.name)) if v is not None]
    cfg = load_config(TrainConfig, args.config, [*flags, *args.overrides])
    run_dir = train(cfg, resume=args.resume)
    if rank == 0:
        print(f"train {cfg.method}: {run_dir / 'final'}")
    return 0
