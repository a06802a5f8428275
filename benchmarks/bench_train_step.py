"""Step time of ``flyp`` and ``arf`` on one model and batch, and the cost of the distinct passes ARF needs.

ARF needs, per step: the finetuning images (once, shared by the class-prompt and caption losses), the anchor
images, and three texts (class prompts, captions, anchor texts), each forward + backward. ARF's step fuses them
into one image pass and one text pass; ``arf / sum of passes`` near 1 (target <= 1.1) means nothing is encoded
twice, and ``arf / flyp`` is the price of the anchors. Synthetic inputs (random pixels, real-looking texts), no
data on disk::

    python benchmarks/bench_train_step.py --model arf:tiny-clip --batch 64 --anchor-batch 64
    python benchmarks/bench_train_step.py --model arf:mini-clip --freeze-image-blocks 5 --freeze-text-blocks 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch


def timed_rounds(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median time of each callable; rounds interleave them, so load from other processes hits all alike."""
    for fn in fns.values():
        fn()  # warm-up (allocations, lazy init)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="arf:tiny-clip")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--anchor-batch", type=int, default=64)
    p.add_argument("--classes", type=int, default=300)
    p.add_argument("--freeze-image-blocks", type=int, default=0)
    p.add_argument("--freeze-text-blocks", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import arf.models
    from arf.data import LabeledSet
    from arf.models.text import trim_padding
    from arf.train.config import TrainConfig
    from arf.train.data import Anchors
    from arf.train.methods import METHODS
    from arf.train.optim import build_optimizer

    bundle = arf.models.create_model(args.model)
    model = bundle.model
    size = int(bundle.info.get("preprocess_cfg", {}).get("size", 224)) if hasattr(bundle, "info") else 224
    g = torch.Generator().manual_seed(0)
    n, a, c = args.batch, args.anchor_batch, args.classes
    classnames = [f"thing number {i}" for i in range(c)]
    ds = LabeledSet("bench", "train", classnames, ["a photo of a {}.", "an icon of a {}."], [f"{i}.png" for i in
                    range(n)], [i % c for i in range(n)])
    captions = [f"a small picture showing {classnames[i % c]} on a white background" for i in range(n)]
    anchors = Anchors([f"p{i}.png" for i in range(a)], [f"retrieved photo {i} of a {classnames[i % c]} in a field"
                                                         for i in range(a)], {})
    batch = {"images": torch.randn(n, 3, size, size, generator=g), "labels": torch.tensor(ds.labels),
             "indices": torch.arange(n), "anchor_images": torch.randn(a, 3, size, size, generator=g),
             "anchor_indices": torch.arange(a)}
    common = {"batch_size": n, "anchor_batch_size": a, "freeze_image_blocks": args.freeze_image_blocks,
              "freeze_text_blocks": args.freeze_text_blocks, "cache_features": False}
    methods = {
        "flyp": METHODS.get("flyp")(TrainConfig(method="flyp", **common), bundle, ds),
        "arf": METHODS.get("arf")(TrainConfig(method="arf", lambda_cap=1.0, lambda_ret=1.0, **common), bundle, ds,
                                  captions, anchors),
    }
    fns: dict[str, Callable[[], None]] = {}
    for name, m in methods.items():
        phase = m.phases(1)[0]
        m.set_trainable(phase)
        m.module.train()
        m.freeze_norm_stats()
        opt = build_optimizer(m.module, m.cfg)
        b = dict(batch) if name == "arf" else {k: v for k, v in batch.items() if not k.startswith("anchor")}

        def step(m=m, b=b, opt=opt, phase=phase) -> None:
            m.losses(m.module, dict(b), 0, phase)["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        fns[f"{name}_step_s"] = step

    # The distinct passes, each forward + backward on its own (what a naive implementation would run).
    m = methods["arf"]
    mod = m.module
    prompts = m.prompts(batch["labels"], batch["indices"], 0)

    def tok(texts: list[str]) -> torch.Tensor:
        return trim_padding(bundle.tokenizer(texts), m.pad_id)

    def run(**inputs: torch.Tensor) -> Callable[[], None]:
        def fn() -> None:
            out = mod(**inputs)
            sum(v.sum() for k, v in out.items() if k in ("image", "text")).backward()
            model.zero_grad(set_to_none=True)
        return fn

    passes = {
        "image_pass_s": run(images=batch["images"]),
        "anchor_image_pass_s": run(images=batch["anchor_images"]),
        "prompt_text_pass_s": run(texts=tok(prompts)),
        "caption_text_pass_s": run(texts=tok(captions)),
        "anchor_text_pass_s": run(texts=tok(anchors.texts)),
    }
    results = timed_rounds({**fns, **passes}, args.repeats)
    total = sum(results[k] for k in passes)
    results["sum_of_passes_s"] = total
    results["arf_over_sum_of_passes"] = results["arf_step_s"] / total
    results["arf_over_flyp"] = results["arf_step_s"] / results["flyp_step_s"]
    info = {"model": args.model, "batch": n, "anchor_batch": a, "threads": args.threads,
            "freeze_image_blocks": args.freeze_image_blocks, "freeze_text_blocks": args.freeze_text_blocks}
    print(json.dumps({**info, **{k: round(v, 4) for k, v in results.items()}}, indent=1))
    return results


if __name__ == "__main__":
    main()
