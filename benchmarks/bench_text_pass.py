"""Text passes of the demo: an ARF step's text pass fused or in length groups, and ``encode_texts`` old or new.

(a) One ARF training step encodes 64 class prompts (~9 tokens), 64 captions (~14) and 64 anchor texts (mostly ~8,
a tail to 18+). Fused, all go through one forward padded to the longest of them; split
(:func:`arf.models.text.length_groups`, what ``Flyp.losses`` does now), they are sorted by length and cut into
``Method.max_text_groups`` forwards, each trimmed to its own longest row. Forward + backward with the demo's
freezing (text embeddings + 3 of 6 MiniLM layers frozen), train mode.

(b) ``encode_texts`` (the retrieval captioner's corpus, zero-shot retrieval queries): old, batches of 256 in the
given order padded to the context; new, shortest first, each batch trimmed, order restored.

Texts: prompts from the offline benchmark's templates and class names, anchor texts from its pool, captions two
pool texts joined by a comma as the retrieval captioner composes them (or ``--captions``). Medians of interleaved
rounds::

    python benchmarks/bench_text_pass.py --model arf:mini-clip --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_train_step import timed_rounds


def encode_texts_unsorted(bundle: Any, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """``encode_texts`` as it was: batches in the given order, each padded to the whole context."""
    out = []
    bundle.model.eval()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            tokens = bundle.tokenizer(list(texts[i:i + batch_size]))
            out.append(bundle.model.encode_text(tokens, normalize=True).float().cpu().numpy())
    return np.concatenate(out)


def demo_texts(pool: str, captions: str | None, classnames: str, seed: int) -> tuple[list[str], ...]:
    """(prompts, captions, anchor texts) to draw steps from."""
    import pyarrow.parquet as pq

    from arf.data.offline.build import EMOJI_TEMPLATES  # the offline train set's templates
    from arf.io import read_json

    rng = random.Random(seed)
    anchors = [t for t in pq.read_table(pool, columns=["text"]).column("text").to_pylist() if t]
    names = read_json(classnames)
    prompts = [t.format(c) for c in names for t in EMOJI_TEMPLATES]
    if captions:
        caps = [c for c in pq.read_table(captions, columns=["caption"]).column("caption").to_pylist() if c]
    else:
        caps = [f"{rng.choice(anchors)}, {rng.choice(anchors)}" for _ in range(5000)]
    return prompts, caps, anchors


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="arf:mini-clip")
    p.add_argument("--batch", type=int, default=64, help="images (prompts and captions) per step")
    p.add_argument("--anchor-batch", type=int, default=64)
    p.add_argument("--freeze-text-blocks", type=int, default=3, help="as configs/offline/arf.yaml")
    p.add_argument("--groups", type=int, default=None, help="text groups of the split pass (default: the method's)")
    p.add_argument("--encode-texts", type=int, default=2000, help="caption-like texts for encode_texts (0: skip)")
    p.add_argument("--pool", default=None, help="pool parquet (default: the offline benchmark's pool.parquet)")
    p.add_argument("--classnames", default=None, help="class names JSON (default: the offline train set's)")
    p.add_argument("--captions", default=None, help="captions parquet (default: pairs of pool texts)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import arf.data
    import arf.models
    from arf.anchors.encode import encode_texts
    from arf.data import LabeledSet
    from arf.models.text import length_groups, token_lengths
    from arf.train.config import TrainConfig
    from arf.train.methods import Arf

    root = arf.data.offline_root()
    pool = Path(args.pool or root / "pool.parquet")
    classnames = Path(args.classnames or root / "classnames" / "train.json")
    for f in (pool, classnames):
        if not f.is_file():
            raise SystemExit(f"{f} not found: build the offline benchmark (`arf data build`) or pass --pool and "
                             f"--classnames")
    prompts, caps, anchor_texts = demo_texts(str(pool), args.captions, str(classnames), 0)
    bundle = arf.models.create_model(args.model)
    cfg = TrainConfig(method="arf", batch_size=args.batch, anchor_batch_size=args.anchor_batch, lambda_cap=0.1,
                      lambda_ret=0.1, freeze_text_blocks=args.freeze_text_blocks, cache_features=False)
    ds = LabeledSet("bench", "train", ["x"], ["{}"], [], [])
    m = Arf(cfg, bundle, ds)
    m.set_trainable(m.phases(1)[0])
    m.module.train()
    groups = args.groups or m.max_text_groups
    if m.pad_id is None:
        print(f"{args.model}: its text tower does not mask padding; nothing is trimmed", file=sys.stderr)

    # (a) One step's text pass, as Flyp.losses runs it: tokenize, group, one module forward, rows back in order.
    rng = random.Random(1)
    steps = [rng.sample(prompts, args.batch) + rng.sample(caps, args.batch) + rng.sample(anchor_texts,
             args.anchor_batch) for _ in range(args.repeats + 1)]
    with torch.no_grad():
        dim = m.module(texts=bundle.tokenizer(["x"]))["text"].shape[1]
    weights = torch.randn(len(steps[0]), dim, generator=torch.Generator().manual_seed(0))
    tokens_used: dict[int, list[int]] = {1: [], groups: []}

    def text_pass(k: int) -> Callable[[], None]:
        it = iter(steps * (args.repeats + 2))

        def fn() -> None:
            parts, restore = length_groups(bundle.tokenizer(next(it)), m.pad_id, k)
            tokens_used[k].append(sum(g.numel() for g in parts))
            txt = m.module(texts=parts)["text"]
            txt = txt if restore is None else txt[restore]
            (txt * weights).sum().backward()  # a loss over every row, as the contrastive losses
            m.module.zero_grad(set_to_none=True)
        return fn

    # Other processes on the machine slow both alike (interleaved rounds) but not by the same factor: under
    # contention each extra forward pays extra, so the 1-minute load average before and after is printed too.
    load = {"load_before_text_pass": os.getloadavg()[0]}
    med = timed_rounds({"fused": text_pass(1), "split": text_pass(groups)}, args.repeats)
    load["load_after_text_pass"] = os.getloadavg()[0]
    m.module.eval()
    with torch.no_grad():  # the same features either way (no dropout in eval mode)
        parts, restore = length_groups(bundle.tokenizer(steps[0]), m.pad_id, groups)
        split = torch.cat([bundle.model.encode_text(g) for g in parts])
        fused = bundle.model.encode_text(length_groups(bundle.tokenizer(steps[0]), m.pad_id, 1)[0][0])
        diff = float((split if restore is None else split[restore]).sub(fused).abs().max())
    out: dict[str, Any] = {
        "model": args.model, "threads": args.threads, "texts_per_step": len(steps[0]), "groups": groups,
        "step_text_pass_fused_s": med["fused"], "step_text_pass_split_s": med["split"],
        "step_text_pass_speedup": med["fused"] / med["split"],
        "tokens_per_step_fused": float(np.median(tokens_used[1])),
        "tokens_per_step_split": float(np.median(tokens_used[groups])), "max_feature_diff": diff, **load}

    # (b) encode_texts on caption-like texts.
    if args.encode_texts:
        texts = random.Random(2).choices(caps, k=args.encode_texts)
        out["load_before_encode_texts"] = os.getloadavg()[0]
        med = timed_rounds({"old": lambda: encode_texts_unsorted(bundle, texts),
                            "new": lambda: encode_texts(bundle, texts)}, args.repeats)
        out["load_after_encode_texts"] = os.getloadavg()[0]
        diff = float(np.abs(encode_texts_unsorted(bundle, texts) - encode_texts(bundle, texts)).max())
        if m.pad_id is not None:
            out["encode_texts_median_tokens"] = float(token_lengths(bundle.tokenizer(texts), m.pad_id).median())
        out.update({"encode_texts_n": len(texts), "encode_texts_old_s": med["old"], "encode_texts_new_s": med["new"],
                    "encode_texts_speedup": med["old"] / med["new"], "encode_texts_max_diff": diff})
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}, indent=1))
    line = (f"| text pass, {args.model}, {args.threads} threads | ARF step text pass fused "
            f"{out['step_text_pass_fused_s']:.3f} s / split {out['step_text_pass_split_s']:.3f} s "
            f"(x{out['step_text_pass_speedup']:.2f})")
    if args.encode_texts:
        line += (f" | encode_texts {out['encode_texts_n']} texts old {out['encode_texts_old_s']:.3f} s / new "
                 f"{out['encode_texts_new_s']:.3f} s (x{out['encode_texts_speedup']:.2f})")
    print(line + f" | `python benchmarks/bench_text_pass.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    return out


if __name__ == "__main__":
    main()
