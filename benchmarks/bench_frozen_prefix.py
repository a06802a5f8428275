"""What the frozen-prefix caches save: the prefix store for training runs, the text prefix cache for WiSE-FT sweeps.

Times, in interleaved rounds (medians): (a) the finetuning set's frozen-prefix activations computed, read from the
store with a check of a fresh first batch (as another process reads them), and read as the process that wrote them;
(b) a WiSE-FT sweep of a finetuned model over the offline benchmark's sets (the demo's cap of images per set) with
and without :class:`arf.evaluate.text_prefix.TextPrefixCache`, every zero-shot head computed afresh in each round.
Both ways of each must give the same activations and the same records; the script fails otherwise::

    python benchmarks/bench_frozen_prefix.py --finetuned runs/demo/train/flyp-s0/final
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from bench_train_step import timed_rounds


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--finetuned", required=True, help="a checkpoint finetuned from arf:mini-clip with frozen "
                                                       "image blocks and text layers (flyp or arf)")
    p.add_argument("--alphas", default="0.25,0.5,0.75")
    p.add_argument("--blocks", type=int, default=5, help="frozen image blocks (the offline configs' 5)")
    p.add_argument("--max-eval-images", type=int, default=200, help="images per set (the demo's cap)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import arf.evaluate.text_prefix as text_prefix
    import arf.evaluate.zeroshot as zeroshot
    import arf.models.prefix_store as prefix_store
    from arf.data import get_suite
    from arf.demo import _cap
    from arf.evaluate import EvalOptions, wise_sweep
    from arf.evaluate.wise import parse_alphas
    from arf.models import create_model
    from arf.models.prefix_store import PrefixStore
    from arf.models.trunk import find_split, prefix_activations

    suite = get_suite("offline")
    train = next(s for s in suite.sets if s.role == "train")
    sets = [_cap(s, args.max_eval_images) for s in suite.sets if s.role != "train"]
    bundle = create_model("arf:mini-clip")
    bundle.model.eval()
    split = find_split(bundle.model, args.blocks)
    device = torch.device("cpu")
    store = PrefixStore(tempfile.mkdtemp(prefix="bench-prefix-store-"), 4 << 30)
    results: dict[str, object] = {}

    def computed() -> None:
        results["computed"] = prefix_activations(split, train, bundle.preprocess_val, device)

    def read_checked() -> None:
        prefix_store._CHECKED.clear()  # as another process finds the entry
        results["checked"] = prefix_activations(split, train, bundle.preprocess_val, device, store=store)

    def read_trusted() -> None:
        results["trusted"] = prefix_activations(split, train, bundle.preprocess_val, device, store=store)

    alphas = parse_alphas(args.alphas)
    opts = EvalOptions(progress=False)
    orig = text_prefix.TextPrefixCache.for_models

    def sweep(cache: bool) -> None:
        zeroshot._DEFAULT_CACHE._mem.clear()  # every head computed, as in a sweep of a new model
        text_prefix.TextPrefixCache.for_models = orig if cache else (lambda *a, **kw: None)  # type: ignore[method-assign]
        try:
            recs = wise_sweep("arf:mini-clip", args.finetuned, alphas, sets=sets, opts=opts)
        finally:
            text_prefix.TextPrefixCache.for_models = orig  # type: ignore[method-assign]
        results[f"sweep {cache}"] = sorted((r.set, r.metric, r.alpha, r.value, r.n, r.config_hash) for r in recs)

    t0 = time.perf_counter()
    out = timed_rounds({
        "prefix of the finetuning set, computed (s)": computed,
        "prefix, read from the store after a first-batch check (s)": read_checked,
        "prefix, read as written by this process (s)": read_trusted,
        "WiSE-FT sweep, no text prefix cache (s)": lambda: sweep(False),
        "WiSE-FT sweep, text prefix cache (s)": lambda: sweep(True),
    }, args.repeats)
    out["rounds wall (s)"] = time.perf_counter() - t0
    a, b, c = (results[k] for k in ("computed", "checked", "trusted"))
    same = all(torch.equal(x.dense.nan_to_num(7.0), a.dense.nan_to_num(7.0)) and x.batch_sizes == a.batch_sizes
               for x in (b, c))
    if not same or results["sweep True"] != results["sweep False"]:
        raise SystemExit("the cached and computed results differ")
    out["images"] = float(len(train))
    out["sweep records"] = float(len(results["sweep True"]))
    out["sweep ratio"] = out["WiSE-FT sweep, no text prefix cache (s)"] / out["WiSE-FT sweep, text prefix cache (s)"]
    print(json.dumps({k: round(v, 4) for k, v in out.items()}, indent=1))
    return out


if __name__ == "__main__":
    main()
