"""What a cached re-run spends before it finds its numbers: loading checkpoints and re-reading records.

A cached `arf demo --full` re-run (every evaluation already recorded) still opens each finetuned model to
fingerprint its weights and re-reads ``records.jsonl`` before every evaluation. This times, in interleaved rounds
(medians): (a) a checkpoint load as training does it (the architecture's random init, then the weights) and as
evaluation does it (``skip_init_on_load``); (b) the weights' fingerprint, hashing each tensor's buffer in place and,
as before 2026-12-07, through a ``tobytes()`` copy; (c) the first parse of a records file and a re-read of it
unchanged::

    python benchmarks/bench_cached_rerun.py --model arf:mini-clip --records runs/demo-full/records.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_train_step import timed_rounds


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="arf:mini-clip", help="a checkpoint (folder) or arf:mini-clip")
    p.add_argument("--records", default=None, help="a records.jsonl to re-read (default: none)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import hashlib

    import arf.models
    from arf.evaluate import records as rec
    from arf.evaluate.zeroshot import weights_fingerprint
    from arf.models.checkpoint import skip_init_on_load

    def load_plain() -> None:
        arf.models.create_model(args.model)

    def load_skip() -> None:
        with skip_init_on_load():
            arf.models.create_model(args.model)

    model = arf.models.create_model(args.model).model

    def fingerprint() -> None:
        weights_fingerprint(model)

    def fingerprint_copy() -> None:  # the same hash through a copy of every tensor's bytes (the code before)
        h = hashlib.sha256()
        for name, t in model.state_dict().items():
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())

    fns = {"load, random init (s)": load_plain, "load, skip_init_on_load (s)": load_skip,
           "fingerprint, in place (s)": fingerprint, "fingerprint, tobytes copy (s)": fingerprint_copy}
    if args.records:
        def parse() -> None:
            rec._PARSED.clear()  # the first read of a file in a process
            rec.read_records(args.records)

        def reread() -> None:
            rec.read_records(args.records)

        fns |= {"records, first read (s)": parse, "records, re-read unchanged (s)": reread}
    t0 = time.perf_counter()
    out = timed_rounds(fns, args.repeats)
    out["rounds wall (s)"] = time.perf_counter() - t0
    a, b = out["load, random init (s)"], out["load, skip_init_on_load (s)"]
    out["load ratio"] = a / b
    out["fingerprint ratio"] = out["fingerprint, tobytes copy (s)"] / out["fingerprint, in place (s)"]
    out["weights (MB)"] = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    if args.records:
        out["records"] = float(len(rec.read_records(args.records)))
    print(json.dumps({k: round(v, 4) for k, v in out.items()}, indent=1))
    return out


if __name__ == "__main__":
    main()
