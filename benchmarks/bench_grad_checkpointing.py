"""What ``grad_checkpointing: true`` saves and costs: peak memory and time of a training step's forward + backward.

Each mode runs in a fresh subprocess (peak memory is per process): the model is built, one step warms up, then
``--repeats`` steps are timed. Memory is the peak over the steps above what the process held after building the
model and before the first step (on CPU the resident set, ``getrusage``; on CUDA ``max_memory_allocated``): the
activations autograd keeps, plus gradients and temporaries. The loss is FLYP's (images against class prompts,
both towers trained), on random pixels and real-looking prompts; no data on disk, no weights downloaded
(``openclip:ViT-B-16`` without a tag is randomly initialised)::

    python benchmarks/bench_grad_checkpointing.py --model openclip:ViT-B-16 --batch 16 --repeats 3
    python benchmarks/bench_grad_checkpointing.py --model arf:mini-clip --batch 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch


def _step_fn(model_id: str, batch: int, device: str):
    import arf.models
    from arf.train.losses import contrastive_loss

    bundle = arf.models.create_model(model_id, device=device)
    model = bundle.model.train()
    size = bundle.info.get("preprocess_cfg", {}).get("size", 224)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    tokens = bundle.tokenizer([f"a photo of a class {i}" for i in range(batch)]).to(device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        contrastive_loss(img, txt, model.logit_scale.exp()).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return model, step


def child(model_id: str, batch: int, repeats: int, checkpointing: bool, device: str, threads: int) -> dict:
    from arf.peak_memory import current_rss, lifetime_peak_rss

    torch.set_num_threads(threads)
    model, step = _step_fn(model_id, batch, device)
    if checkpointing:
        from arf.train.grad_checkpointing import enable_grad_checkpointing

        enable_grad_checkpointing(model, model_id, freeze_bn_stats=True)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss() or 0
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if cuda else lifetime_peak_rss()
    return {"step_s": statistics.median(times), "peak_over_model_mb": (peak - base) / 2**20}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="openclip:ViT-B-16")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--_child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        print(json.dumps(child(args.model, args.batch, args.repeats, args._child == "on", args.device,
                               args.threads)))
        return {}
    out = {}
    for mode in ("off", "on"):
        cmd = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--repeats",
               str(args.repeats), "--device", args.device, "--threads", str(args.threads), "--_child", mode]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"the {mode} run failed:\n{res.stderr[-2000:]}")
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    out["memory_ratio_on_off"] = out["on"]["peak_over_model_mb"] / out["off"]["peak_over_model_mb"]
    out["time_ratio_on_off"] = out["on"]["step_s"] / out["off"]["step_s"]
    print(json.dumps({"model": args.model, "batch": args.batch, "device": args.device, **out}, indent=2))
    return out


if __name__ == "__main__":
    main()
