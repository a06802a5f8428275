"""CLI: ``arf eval`` (a model on suites → table + JSONL records) and ``arf wise`` (WiSE-FT sweeps)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _names(text: str) -> list[str]:
    """A comma-separated list (``--suite``, ``--roles``, ``--sets``), blanks dropped."""
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="root of the suites' data (default: $ARF_DATA)")
    # The default is arf.data.formats.EVAL_ROLES, resolved in _options (importing arf.data here would load torch).
    p.add_argument("--roles", default=None,
                   help="comma-separated set roles to evaluate (default: every role but train)")
    p.add_argument("--sets", default=None,
                   help="comma-separated set names to evaluate, of the suites' sets with those roles (default: all)")
    p.add_argument("--method", default=None, help="method name for the records (default: from the checkpoint)")
    p.add_argument("--seed", type=int, default=None, help="seed for the records (default: from the checkpoint)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--workers", type=int, default=0, help="data loader workers (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` and ``wise``."""
    p = sub.add_parser("eval", help="evaluate a model or checkpoint on suites; print a table, append JSONL records",
                       description="Top-1/top-5 of a model on every set of the suites, with ID / OOD / zero-shot "
                                   "averages from the sets' roles.")
    p.add_argument("--model", required=True, help="model id (arf:mini-clip, openclip:…) or checkpoint folder")
    p.add_argument("--suite", required=True, help="suite name(s), comma-separated (e.g. offline)")
    p.add_argument("--out", default=None, help="append records to this JSONL file")
    _add_eval_options(p)
    p.set_defaults(func=cmd_eval)

    w = sub.add_parser("wise", help="WiSE-FT: interpolate a zero-shot and a finetuned model for each alpha",
                       description="Writes one checkpoint (--out) and/or one evaluation (--eval) per alpha.")
    w.add_argument("--zeroshot", required=True, help="the zero-shot model id or checkpoint (theta0)")
    w.add_argument("--finetuned", required=True, help="the finetuned checkpoint (theta1)")
    w.add_argument("--alphas", default="0:1:0.1", help="start:stop:step (stop included) or a list 0,0.5,1 "
                                                         "(default: 0:1:0.1)")
    w.add_argument("--text-alpha", type=float, default=None, metavar="T",
                   help="hold everything outside the image tower (text tower, projection, logit scale) at alpha T "
                        "while --alphas sweeps the image tower (per-tower WiSE-FT); records' method gets -text<T>")
    w.add_argument("--eval", default=None, metavar="SUITE", help="evaluate each alpha on these suites")
    w.add_argument("--out", default=None, metavar="DIR", help="write a checkpoint per alpha to DIR/alpha_<a>/")
    w.add_argument("--records", default=None,
                   help="append evaluation records here (default: DIR/records.jsonl with --out)")
    w.add_argument("--prefix-store", default=None, metavar="DIR",
                   help="keep the frozen image prefix's activations of each set in DIR for later sweeps over the "
                        "same base and sets (a training run's <out_dir>/prefix-store serves; default: memory only)")
    _add_eval_options(w)
    w.set_defaults(func=cmd_wise)


def _options(args: argparse.Namespace) -> Any:
    from arf.config import check
    from arf.evaluate import EvalOptions

    check(args.batch_size > 0, "--batch-size", f"must be > 0, got {args.batch_size}")
    check(args.workers >= 0, "--workers", f"must be >= 0, got {args.workers}")
    from arf.data import ROLES
    from arf.data.formats import EVAL_ROLES

    roles = EVAL_ROLES if args.roles is None else tuple(_names(args.roles))

    bad = [r for r in roles if r not in ROLES]
    check(not bad and bool(roles), "--roles", f"unknown role {bad[0] if bad else ''!r}; choose from "
                                              f"{', '.join(ROLES)}")
    return EvalOptions(batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                       progress=not args.no_progress, roles=roles)


def load_sets(suites: str, root: str | None, only: str | None = None) -> list[Any]:
    """Sets of one or more comma-separated suites (only those named in ``only``, if given); a set in two suites is
    evaluated once."""
    from arf.config import check
    from arf.data import get_suite

    names = _names(suites)
    check(bool(names), "--suite", "no suite named")
    sets: dict[str, Any] = {}
    for name in names:
        for ds in get_suite(name, root=root):
            sets.setdefault(ds.name, ds)
    if only is None:
        return list(sets.values())
    wanted = _names(only)
    unknown = [s for s in wanted if s not in sets]
    check(bool(wanted) and not unknown, "--sets",
          f"unknown set {unknown[0] if unknown else ''!r} in suite {suites}; choose from {', '.join(sets)}")
    return [sets[s] for s in wanted]


def format_records(records: list[Any]) -> str:
    """A plain-text table: one line per set, then the role averages."""
    from arf.evaluate import role_averages

    by_set: dict[str, dict[str, Any]] = {}
    for r in records:
        row = by_set.setdefault(r.set, {"role": r.role, "n": r.n, "head": r.head or "?"})
        row[r.metric] = r.value
    width = max([len(s) for s in by_set] + [17])  # "zero-shot val avg"
    rw = max([len(row["role"]) for row in by_set.values()] + [8])
    lines = [f"{'set':<{width}}  {'role':<{rw}}  {'n':>6}  {'top1':>6}  {'top5':>6}  head"]
    for s, row in by_set.items():
        top5 = f"{row['top5']:6.2f}" if "top5" in row else f"{'-':>6}"
        lines.append(f"{s:<{width}}  {row['role']:<{rw}}  {row['n']:>6}  {row['top1']:6.2f}  {top5}  {row['head']}")
    avgs = role_averages(records, "top1")
    if avgs:
        lines.append("-" * len(lines[0]))
        for name, v in avgs.items():
            lines.append(f"{name:<{width}}  {'':<{rw}}  {'':>6}  {v:6.2f}")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from arf.evaluate import evaluate, evaluate_to_file, load_trained_head, model_tag
    from arf.models import create_model
    from arf.models.checkpoint import skip_init_on_load

    opts = _options(args)
    sets = load_sets(args.suite, args.data_root, args.sets)
    with skip_init_on_load():  # evaluation only: nothing random follows the load
        bundle = create_model(args.model, device=opts.device)
    head = load_trained_head(args.model) if Path(args.model).exists() else None
    tag = model_tag(args.model, method=args.method, seed=args.seed)
    if args.out:
        records = evaluate_to_file(bundle, sets, head, args.out, tag=tag, opts=opts)
    else:
        records = evaluate(bundle, sets, head, tag=tag, opts=opts)
    print(f"{tag.model} ({tag.method}{'' if tag.seed is None else f', seed {tag.seed}'})")
    print(format_records(records))
    if args.out:
        print(f"records in {args.out} (sets already recorded for these weights were not evaluated again)")
    return 0


def cmd_wise(args: argparse.Namespace) -> int:
    from arf.config import check
    from arf.evaluate import AVERAGES, parse_alphas, role_averages, wise_sweep
    from arf.evaluate.wise import check_alpha

    alphas = parse_alphas(args.alphas)
    if args.text_alpha is not None:
        check_alpha(args.text_alpha, "--text-alpha")
    check(args.eval is not None or args.out is not None, "--eval/--out", "give --eval SUITE, --out DIR or both")
    opts = _options(args)
    sets = load_sets(args.eval, args.data_root, args.sets) if args.eval else None
    records_path = args.records or (str(Path(args.out) / "records.jsonl") if args.out and sets else None)
    records = wise_sweep(args.zeroshot, args.finetuned, alphas, sets=sets, out_dir=args.out,
                         records_path=records_path, opts=opts, method=args.method, seed=args.seed,
                         prefix_store=args.prefix_store, text_alpha=args.text_alpha)
    if records:
        cols = [name for role, name in AVERAGES.items() if any(r.role == role for r in records)]
        print(f"{'alpha':>6}  " + "  ".join(f"{c:>13}" for c in cols))
        for a in alphas:
            avg = role_averages([r for r in records if r.alpha == a], "top1")
            print(f"{a:6.3f}  " + "  ".join(f"{avg[c]:13.2f}" if c in avg else f"{'-':>13}" for c in cols))
    if records_path:
        print(f"records appended to {records_path}")
    if args.out:
        print(f"checkpoints in {args.out}")
    return 0
