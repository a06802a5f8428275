"""DDP on CPU (gloo, 2 processes) gives the loss and gradients of one process on the global batch."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from train_fixtures import make_anchors, make_benchmark, make_captions

WORLD = 2


def _setup(root: Path, method: str):
    import arf.data
    import arf.models
    from arf.train.config import TrainConfig
    from arf.train.data import read_anchors, read_captions
    from arf.train.methods import METHODS

    kw = {}
    if method in ("arf", "arf-ft"):
        kw = {"lambda_cap": 1.0, "lambda_ret": 0.5, "captions": str(root / "captions.parquet"),
              "anchors": str(root / "anchors"), "anchor_batch_size": 4}
    cfg = TrainConfig(method=method, model="arf:tiny-clip", data_root=str(root), batch_size=8, **kw)
    ds = arf.data.get_suite("offline", root).get("train")
    bundle = arf.models.create_model("arf:tiny-clip")
    caps = read_captions(cfg.captions, ds) if cfg.lambda_cap > 0 else None
    anchors = read_anchors(cfg.anchors, root) if cfg.lambda_ret > 0 else None
    m = METHODS.get(method)(cfg, bundle, ds, caps, anchors)
    phase = m.phases(3)[0]
    m.set_trainable(phase)
    return cfg, ds, m, phase, anchors


def _batch(cfg, ds, m, phase, anchors, rank: int, world: int, step: int):
    from arf.images import BadInputCounter
    from arf.train.data import StepDataset, StepSampler, collate

    sampler = StepSampler(cfg, len(ds), len(anchors) if anchors else 0, rank, world, 0, 3,
                          lambda s: m.needs(phase))
    data = StepDataset(ds, m.bundle.preprocess_val, False, anchors, BadInputCounter("test"))
    return collate([data[k] for k in sampler.keys(step, 0)])


def _step(root: Path, method: str, rank: int, world: int) -> dict[str, object]:
    from arf.train.losses import global_mean

    cfg, ds, m, phase, anchors = _setup(root, method)
    module = m.module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(m.module)
    out: dict[str, object] = {}
    for step in (0, 1):
        batch = _batch(cfg, ds, m, phase, anchors, rank, world, step)
        losses = m.losses(module, batch, step, phase)
        losses["loss"].backward()
        out[f"losses{step}"] = {k: global_mean(v) for k, v in losses.items()}
    out["grads"] = {n: p.grad.clone() for n, p in m.module.named_parameters() if p.grad is not None}
    return out


def _worker(rank: int, root: str, port: int, methods: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for method in methods:
            torch.save(_step(Path(root), method, rank, WORLD), f"{out}.{method}.{rank}")
        torch.distributed.barrier()  # as arf.train.distributed.cleanup: no rank tears gloo down under another
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# contrastive (gather with grad, 3 losses), cross-entropy (all-reduced count), and both in one step (arf-ft)
METHODS = ["arf", "ft", "arf-ft"]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    root = make_benchmark(tmp / "bench")
    make_captions(root, missing=3)  # ranks then hold different numbers of captions: the padded gather is exercised
    make_anchors(root)
    out = str(tmp / "res")
    # One spawn for every method: starting processes dominates this test's time.
    mp.spawn(_worker, args=(str(root), _free_port(), METHODS, out), nprocs=WORLD, join=True)
    return root, out


@pytest.mark.parametrize("method", METHODS)
def test_ddp_two_processes_equal_one_process_on_global_batch(ddp_results, method):
    root, out = ddp_results
    ref = _step(root, method, 0, 1)
    for rank in range(WORLD):
        got = torch.load(f"{out}.{method}.{rank}", weights_only=True)
        for step in (0, 1):
            assert got[f"losses{step}"].keys() == ref[f"losses{step}"].keys()
            for k, v in ref[f"losses{step}"].items():
                assert got[f"losses{step}"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (k, step)
        assert got["grads"].keys() == ref["grads"].keys() and ref["grads"]
        for n, g in ref["grads"].items():
            # Summation order differs across processes: compare against the tensor's scale, not element-wise.
            err = (got["grads"][n] - g).abs().max().item()
            assert err <= 1e-4 * g.abs().max().item() + 1e-7, (n, err)
    if method in ("arf", "arf-ft"):
        first = "clip_loss" if method == "arf" else "ce_loss"
        assert {first, "caption_loss", "anchor_loss", "loss"} <= set(ref["losses0"])


def test_torchrun_arf_train_end_to_end(tmp_path):
    """``torchrun --nproc_per_node 2 -m arf.cli train`` runs, rank 0 alone writes, and matches one process."""
    import json
    import subprocess

    import yaml
    from safetensors.torch import load_file

    from arf.config import load_config
    from arf.train import TrainConfig, train

    root = make_benchmark(tmp_path / "bench", per_class=4)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "method": "flyp", "model": "arf:tiny-clip", "data_root": str(root), "out_dir": str(tmp_path / "runs"),
        "batch_size": 8, "max_steps": 2, "lr": 1e-4, "progress": False, "tensorboard": False}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "arf.cli", "train", "--config", str(cfg_path), "--name", "ddp"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("train flyp:") == 1  # rank 0 only
    single = train(load_config(TrainConfig, cfg_path, ["name=single"]))
    ddp = tmp_path / "runs" / "ddp"
    la = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [1, 2]
    for a, b in zip(la, lb, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    wa = load_file(str(ddp / "final" / "open_clip_model.safetensors"))
    wb = load_file(str(single / "final" / "open_clip_model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5)
