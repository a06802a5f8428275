"""Per-step cost of ARF's retrieved-anchor images: decoded + frozen prefix every step, or cached activations.

With ``freeze_image_blocks`` the anchor images (fixed, not augmented) go through a prefix that never changes, so
training caches its output once (``Method.prepare``) and a step only gathers rows. This times, on real pool images,
what a step spends on the anchors before the trained suffix: (a) load + preprocess + prefix of a batch of anchors,
(b) the same rows gathered from the cache; medians of interleaved rounds, plus the one-off cost of the cache::

    python benchmarks/bench_anchor_cache.py --model arf:mini-clip --freeze-image-blocks 5 --anchor-batch 32
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_train_step import timed_rounds


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="arf:mini-clip")
    p.add_argument("--freeze-image-blocks", type=int, default=5)
    p.add_argument("--anchor-batch", type=int, default=32, help="anchors per step and process (64 over 2 ranks)")
    p.add_argument("--pool", default=None, help="pool parquet (default: the offline benchmark's pool.parquet)")
    p.add_argument("--max-anchors", type=int, default=512, help="anchors cached (the run caches all of them)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import arf.data
    import arf.models
    from arf.images import BadInputCounter
    from arf.models.trunk import encode_prefix, find_split
    from arf.train.data import AnchorImages

    bundle = arf.models.create_model(args.model)
    model = bundle.model.eval()
    split = find_split(model, args.freeze_image_blocks)
    if split is None:
        raise SystemExit(f"{args.model}: no split image tower at {args.freeze_image_blocks} blocks")
    pool = args.pool or str(arf.data.offline_root() / "pool.parquet")
    paths = [str(q.path) for q in arf.data.read_pairs(pool) if q.path][: args.max_anchors]
    images = AnchorImages(paths, None, bundle.preprocess_val, BadInputCounter("bench"))

    t0 = time.perf_counter()
    acts = encode_prefix(split, images, bundle.preprocess_val, torch.device("cpu"))
    build = time.perf_counter() - t0
    assert acts is not None
    gen = torch.Generator().manual_seed(0)

    def batch() -> list[int]:
        return torch.randint(len(paths), (args.anchor_batch,), generator=gen).tolist()

    @torch.no_grad()
    def pixels() -> None:
        x = torch.stack([images[i][0] for i in batch()])
        split.prefix(x)

    def cached() -> None:
        acts[torch.tensor(batch())].clone()

    med = timed_rounds({"pixels": pixels, "cached": cached}, args.repeats)
    out = {"anchors_per_step": args.anchor_batch, "pixels_s": med["pixels"], "cached_s": med["cached"],
           "cache_build_s": build, "cache_images": len(paths), "cache_build_per_image_ms": 1000 * build / len(paths)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
