"""CLI: ``arf wise-probe`` — WiSE-FT towers + a linear probe + the text side moved back (:mod:`arf.wise_probe`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``wise-probe``."""
    p = sub.add_parser(
        "wise-probe", help="read-out recipe: WiSE-FT towers, a linear probe, the text side back towards zero-shot",
        description="For each alpha: interpolate zero-shot -> finetuned, train a linear probe on the interpolated "
                    "image features, evaluate it on the selection set. Alpha = the smallest whose probe val (mean "
                    "over the given models, e.g. one per seed) reaches --min-val (else the best). Then the probed "
                    "model's text side goes to --text-alpha of the finetuned model's, and it is evaluated on "
                    "every set of --suite. Records: method <finetuned method>-wp.")
    p.add_argument("--finetuned", required=True,
                   help="finetuned checkpoint folder(s), comma-separated (one method, e.g. one per seed)")
    p.add_argument("--suite", required=True, help="suite(s) to evaluate the result on, comma-separated "
                                                  "(they must hold the selection set)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for probes, checkpoints and records")
    p.add_argument("--zeroshot", default="arf:mini-clip", help="the zero-shot model (theta0; default arf:mini-clip)")
    p.add_argument("--alphas", default="0.5:0.9:0.1", help="image alpha grid, start:stop:step or a list "
                                                            "(default 0.5:0.9:0.1)")
    p.add_argument("--min-val", type=float, default=None, metavar="TOP1",
                   help="val floor (top-1 %%) of the alpha choice, e.g. the best peer's val - 1 (default: the "
                        "alpha with the best val)")
    p.add_argument("--text-alpha", default="0.2", metavar="T|none",
                   help="text side as a fraction of the finetuned model's (default 0.2; none leaves it at alpha)")
    p.add_argument("--select-set", default="val", help="the set alpha is chosen on (default val)")
    p.add_argument("--probe-config", default=None,
                   help="TrainConfig YAML of the probe (method lp; default configs/offline/lp.yaml)")
    p.add_argument("--probe-set", dest="probe_overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the probe's config (repeatable)")
    p.add_argument("--records", default=None, help="append the results' records here (default DIR/records.jsonl)")
    p.add_argument("--method", default=None, help="method name (default: from the checkpoints)")
    p.add_argument("--keep-interpolated", action="store_true",
                   help="keep the WiSE-FT checkpoints of each alpha (each probe's final/ holds the same towers)")
    p.add_argument("--keep-probes", action="store_true",
                   help="keep the probe of every alpha (default: only the chosen alpha's; the others' val is kept "
                        "in probe_val.json, and a later choice of another alpha trains its probe again)")
    p.add_argument("--data-root", default=None, help="root of the suites' data (default: $ARF_DATA); also the probe's "
                   "training data root unless its config reads class folders (suite: folder)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--workers", type=int, default=0, help="data loader workers (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_wise_probe, roles=None)


def _text_alpha(text: str) -> float | None:
    from arf.errors import ConfigError

    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--text-alpha: {text!r} is not a number in [0, 1] or none") from None


def cmd_wise_probe(args: argparse.Namespace) -> int:
    from arf.cli.evaluate import _names, _options, load_sets
    from arf.evaluate import role_averages
    from arf.wise_probe import WiseProbeConfig, run_wise_probe

    cfg = WiseProbeConfig(zeroshot=args.zeroshot, alphas=args.alphas, min_val=args.min_val,
                          text_alpha=_text_alpha(args.text_alpha), select_set=args.select_set,
                          probe_overrides=list(args.probe_overrides), keep_interpolated=args.keep_interpolated,
                          keep_probes=args.keep_probes, data_root=args.data_root)
    if args.probe_config:
        cfg.probe_config = args.probe_config
    cfg.validate()  # before any set is read
    sets = load_sets(args.suite, args.data_root)
    res = run_wise_probe(cfg, _names(args.finetuned), args.out, sets, records_path=args.records,
                         method=args.method, opts=_options(args))
    print(f"alpha {res.alpha:g} (mean {cfg.select_set} top-1 per alpha: "
          + ", ".join(f"{a:g} {v:.2f}" for a, v in res.mean_val.items())
          + ("" if cfg.min_val is None else f"; floor {cfg.min_val:g}") + ")")
    for final in res.finals:
        avg = role_averages([r for r in res.records if r.model == str(final.resolve())], "top1")
        print(f"{final}: " + ", ".join(f"{k} {v:.2f}" for k, v in avg.items()))
    print(f"records appended to {args.records or f'{args.out}/records.jsonl'}")
    return 0
