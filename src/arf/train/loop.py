"""The trainer: ``train(cfg) -> run_dir`` for every method, one process or torchrun + DDP.

Run folder: ``config.yaml`` (resolved config), ``metrics.jsonl`` (one line per optimizer step),
TensorBoard events, ``checkpoints/step_*/`` (resumable state) and ``final/`` (an ``arf.models.save_checkpoint``
folder, plus ``head.safetensors`` for methods with a head). Only rank 0 writes and shows progress.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arf.config import save_config
from arf.errors import ArfError, ConfigError
from arf.io import atomic_path, ensure_dir, read_json, write_json
from arf.models.base import eval_mode
from arf.train import checkpoint as ckpt
from arf.train import distributed as D
from arf.train.config import TrainConfig, check_against_data
from arf.train.data import (
    Anchors,
    StepDataset,
    StepSampler,
    check_sizes,
    make_step_loader,
    read_anchor_meta,
    read_anchors,
    read_captions,
)
from arf.train.losses import global_mean
from arf.train.methods import METHODS, Method, Phase
from arf.train.optim import build_optimizer, lr_at, set_lr
from arf.train.run_hash import same_run, train_hash

log = logging.getLogger(__name__)


class TrainingDiverged(ArfError):
    """A non-finite loss or gradient; the message names the step and the last good checkpoint."""


def resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it; fp32 on CPU unless asked (CPU bf16 is slower there).

    ``precision=bf16`` where the device cannot run it (autocast unavailable for the device type, a GPU without
    bf16, a CPU whose bf16 matmul fails) falls back to fp32 with a warning instead of failing mid-run.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        if _bf16_autocast_works(device.type):
            return torch.bfloat16
        log.warning("precision=bf16: bf16 autocast is not supported on %s here; training in fp32", device)
        return None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _bf16_autocast_works(device_type: str) -> bool:
    if not torch.amp.is_autocast_available(device_type):
        return False
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return True  # other backends: trust torch's own availability check
    try:  # a tiny probe: some CPU builds reject bf16 kernels only when one runs
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out = torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2))
        return out.dtype == torch.bfloat16 and bool(torch.isfinite(out.float()).all())
    except (RuntimeError, NotImplementedError):
        return False


def _json_or_asset(spec: str, loader: Any) -> Any:
    p = Path(spec).expanduser()
    return json.loads(p.read_text()) if p.suffix == ".json" and p.is_file() else loader(spec)


def load_train_set(cfg: TrainConfig) -> Any:
    """The finetuning set: a suite's set, or class folders (``suite: folder``, e.g. ImageNet train)."""
    import arf.data

    if cfg.suite != "folder":
        return arf.data.get_suite(cfg.suite, cfg.data_root).get(cfg.train_set)
    assert cfg.data_root and cfg.folder_classnames and cfg.folder_templates  # validate() checked them
    classnames = _json_or_asset(cfg.folder_classnames, arf.data.load_classnames)
    templates = _json_or_asset(cfg.folder_templates, arf.data.load_templates)
    order = _json_or_asset(cfg.folder_order, arf.data.load_json_asset) if cfg.folder_order else None
    root = Path(cfg.data_root).expanduser()
    paths, labels, _ = arf.data.read_class_folders(root, classnames, order)
    return arf.data.LabeledSet(name=cfg.train_set, role="train", classnames=list(classnames),
                               templates=list(templates), paths=paths, labels=labels, root=str(root),
                               reference=cfg.train_set)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class MetricsLog:
    """metrics.jsonl (truncated to the resumed step) and TensorBoard, rank 0 only."""

    def __init__(self, run_dir: Path, start_step: int, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.is_file():
            # Lines past the checkpoint we resume from were written by the killed run: drop them.
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(k + "\n" for k in keep))
        self.f = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                log.info("tensorboard is not installed; metrics go to metrics.jsonl only")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.f.close()
            if self.tb is not None:
                self.tb.close()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _grad_norm(params: list[nn.Parameter], clip: float) -> torch.Tensor:
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    grads = [p.grad.detach().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.tensor(0.0)


@torch.no_grad()
def encode_set(method: Method, device: torch.device, batch_size: int = 128) -> torch.Tensor:
    """Image features of the whole finetuning set (eval transform), for a frozen image tower."""
    import arf.data

    if method.cfg.feature_prefix_blocks > 0:
        feats = _features_through_prefix(method, device, batch_size)
        if feats is not None:
            return feats
    ds = arf.data.ImageDataset.from_set(method.ds, method.bundle.preprocess_val)
    out: list[torch.Tensor] = []
    idx: list[torch.Tensor] = []
    with eval_mode(method.bundle.model) as model:
        for x, _, i in arf.data.make_loader(ds, batch_size=batch_size):
            out.append(model.encode_image(x.to(device)).float().cpu())
            idx.append(i)
    f = torch.cat(out)
    feats = torch.full((len(ds), f.shape[1]), float("nan"))
    feats[torch.cat(idx)] = f
    return feats


def _features_through_prefix(method: Method, device: torch.device, batch_size: int) -> torch.Tensor | None:
    """:func:`encode_set`'s features with the first ``feature_prefix_blocks`` blocks read from the prefix store
    (computed and stored by the first probe over these images and this prefix), or None where the tower cannot be
    split there or the split differs from the whole tower on the first batch."""
    from arf.models.trunk import find_split, prefix_activations

    model = method.bundle.model
    split = find_split(model, method.cfg.feature_prefix_blocks)
    if split is None:
        return None
    with eval_mode(model):
        acts = prefix_activations(split, method.ds, method.bundle.preprocess_val, device, batch_size,
                                  store=method.store(),
                                  first=lambda x, h: torch.equal(model.encode_image(x), split.suffix(h)))
        if acts is None or not acts.batch_sizes:
            log.info("lp features: the split image tower is not used (no match with the whole tower, or too big)")
            return None
        feats: torch.Tensor | None = None
        for h, _, idx in acts.batches(split.dtype):
            f = split.suffix(h.to(device)).float().cpu()
            if feats is None:
                feats = torch.full((len(acts.dense), f.shape[1]), float("nan"))
            feats[idx] = f
    return feats


def train(cfg: TrainConfig, *, bundle: Any | None = None, train_set: Any | None = None,
          resume: str | None = None) -> Path:
    """Train ``cfg.method`` and return the run folder (``final/`` holds the model)."""
    cfg.validate()
    info = D.init_distributed(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available()
                                                                       else "cpu"))
    try:
        run_dir = _train(cfg, info, bundle, train_set, resume)
    except BaseException:
        D.cleanup()
        raise
    D.cleanup(synchronize=True)
    return run_dir


def _train(cfg: TrainConfig, info: D.DistInfo, bundle: Any | None, ds: Any | None, resume: str | None) -> Path:
    import arf.models

    device = resolve_device(cfg.device, info.local_rank)
    if device.type == "cpu" and torch.get_num_threads() > 2 and info.enabled:
        torch.set_num_threads(max(1, torch.get_num_threads() // info.world_size))
    run_dir = cfg.run_dir
    method_cls = METHODS.get(cfg.method)
    if resume is None and ckpt.list_checkpoints(run_dir):
        raise ConfigError(f"name: the run folder {run_dir} already holds checkpoints; pass --resume latest to "
                          "continue it, or choose another name/out_dir")
    if info.is_master:
        # An unwritable out_dir is one OutputError line, and found before the model and data are loaded.
        ensure_dir(run_dir)
    seed_everything(cfg.seed)

    ds = ds if ds is not None else load_train_set(cfg)
    anchor_meta = read_anchor_meta(cfg.anchors) if cfg.lambda_ret > 0 and cfg.anchors else None
    if bundle is None:
        bundle = arf.models.create_model(cfg.model, device=str(device))
    check_against_data(cfg, len(ds), info.world_size, ds.name, str(bundle.model_id), anchor_meta,
                       classnames=getattr(ds, "classnames", None))
    captions = read_captions(cfg.captions, ds) if cfg.lambda_cap > 0 and cfg.captions else None
    anchors: Anchors | None = None
    if cfg.lambda_ret > 0 and cfg.anchors:
        anchors = read_anchors(cfg.anchors, cfg.anchor_root or ds.root)
        check_sizes(cfg, len(anchors), info.world_size)
    bundle.model.to(device)
    if cfg.grad_checkpointing:
        from arf.train.grad_checkpointing import enable_grad_checkpointing

        enable_grad_checkpointing(bundle.model, str(bundle.model_id), cfg.freeze_bn_stats)

    if info.is_master:
        save_config(cfg, run_dir / "config.yaml")
    method: Method = method_cls(cfg, bundle, ds, captions, anchors)
    if not method.trains:
        if info.is_master:
            write_final(method, run_dir, cfg, step=0)
        D.barrier()
        return run_dir

    spe = max(1, len(ds) // cfg.batch_size)
    phases = method.phases(spe)
    total = phases[-1].start + phases[-1].steps
    module = method.module.to(device)
    optimizer = build_optimizer(module, cfg)
    step = 0
    if resume == "latest" and not ckpt.list_checkpoints(run_dir):
        # Killed before its first checkpoint: nothing to continue, so start over (the old log is truncated).
        log.warning("--resume latest: no checkpoint in %s yet; starting from step 0", run_dir)
        resume = None
    if resume is not None:
        path = ckpt.resolve(run_dir, resume)
        meta = ckpt.load(path, module, optimizer)
        if not same_run(meta.get("config_hash"), cfg):
            log.warning("resuming %s with a changed config (hash %s -> %s)", path, meta.get("config_hash"),
                        train_hash(cfg))
        step = int(meta["step"])
        log.info("resumed from %s at step %d of %d", path, step, total)
    last_good = ckpt.list_checkpoints(run_dir)[-1] if ckpt.list_checkpoints(run_dir) else None

    amp = autocast_dtype(cfg.precision, device)
    metrics = MetricsLog(run_dir, step, info.is_master, cfg.tensorboard)
    counter = _counter(ds.name)
    counter_ds = StepDataset(ds, bundle.preprocess_train if cfg.augment else bundle.preprocess_val, cfg.augment,
                             anchors, counter)

    def phase_of(s: int) -> Phase:
        return next(p for p in phases if p.start <= s < p.start + p.steps)

    sampler = StepSampler(cfg, len(ds), len(anchors) if anchors else 0, info.rank, info.world_size, step, total,
                          lambda s: method.needs(phase_of(s)))
    loader = iter(make_step_loader(counter_ds, sampler, cfg.num_workers))
    bar = None
    if info.is_master and cfg.progress:
        from arf.progress import progress_bar

        bar = progress_bar(total=total, initial=step, desc=f"train {cfg.method}", dynamic_ncols=True)

    current: Phase | None = None
    ddp: nn.Module = module
    params: list[nn.Parameter] = []
    t_last, n_img = time.perf_counter(), 0
    while step < total:
        phase = phase_of(step)
        if phase != current:
            current = phase
            method.set_trainable(phase)
            t0 = time.perf_counter()
            method.prepare(phase, device, encode_set)
            if time.perf_counter() - t0 > 1:
                log.info("phase %s: caches of frozen parts built in %.1f s", phase.name, time.perf_counter() - t0)
            t_last = time.perf_counter()  # throughput counts training steps, not cache building
            params = [p for p in module.parameters() if p.requires_grad]
            ddp = _wrap(module, info, device)
            module.train()
            method.freeze_norm_stats()
            log.info("phase %s: steps %d-%d, lr %g, %d trainable tensors (%d parameters)", phase.name,
                     phase.start, phase.start + phase.steps, phase.lr, len(params), sum(p.numel() for p in params))
        lr = lr_at(step - phase.start, phase.steps, phase.lr, cfg.warmup_steps, cfg.min_lr)
        set_lr(optimizer, lr)
        sums: dict[str, float] = {}
        for micro in range(cfg.accum_steps):
            batch = _to(next(loader), device)
            n_img += int(batch["labels"].shape[0])
            sync = micro == cfg.accum_steps - 1 or not info.enabled
            # DDP all-reduces gradients only on the last micro-step (forward and backward inside no_sync);
            # autocast covers the forward only, as torch recommends.
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with _autocast(device, amp):
                    losses = method.losses(ddp, batch, step, phase)
                (losses["loss"] / cfg.accum_steps).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + global_mean(v) / cfg.accum_steps
        if cfg.num_workers == 0:
            # Unreadable images are skipped and counted; too many of them stop the run with their paths named.
            counter.check(final=False)
        gnorm = float(_grad_norm(params, cfg.grad_clip))
        bad = [k for k, v in sums.items() if not math.isfinite(v)]
        if bad or not math.isfinite(gnorm):
            what = f"{bad[0]} = {sums[bad[0]]}" if bad else f"gradient norm = {gnorm}"
            metrics.close()
            raise TrainingDiverged(
                f"non-finite {what} at step {step + 1}; stopped before the update. Last good checkpoint: "
                f"{last_good or 'none'} (resume with --resume latest after lowering lr or checking the data)")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _clamp_logit_scale(module)
        step += 1
        if bar is not None:
            dt = time.perf_counter() - t_last
            bar.set_postfix(loss=f"{sums['loss']:.4f}", img_s=f"{n_img * info.world_size / max(dt, 1e-9):.1f}")
            bar.update(1)
        if step % cfg.log_every == 0 or step == total:
            dt = time.perf_counter() - t_last
            metrics.write({"step": step, "phase": phase.name, "lr": lr, "grad_norm": gnorm,
                           **{k: round(v, 6) for k, v in sums.items()},
                           "img_per_s": round(n_img * info.world_size / max(dt, 1e-9), 2)})
            t_last, n_img = time.perf_counter(), 0
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            last_good = _checkpoint(run_dir, step, module, optimizer, cfg, info)
    if bar is not None:
        bar.close()
    metrics.close()
    _checkpoint(run_dir, step, module, optimizer, cfg, info)
    if info.is_master:
        write_final(method, run_dir, cfg, step)
    D.barrier()
    return run_dir


def _counter(name: str):
    from arf.images import BadInputCounter

    return BadInputCounter(f"train:{name}")


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _wrap(module: nn.Module, info: D.DistInfo, device: torch.device) -> nn.Module:
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids)


def _clamp_logit_scale(module: nn.Module) -> None:
    """As open_clip: keep the temperature from growing past 100."""
    scale = getattr(module.model, "logit_scale", None)
    if isinstance(scale, nn.Parameter) and scale.requires_grad:
        with torch.no_grad():
            scale.clamp_(0, math.log(100))


def _checkpoint(run_dir: Path, step: int, module: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                info: D.DistInfo) -> Path | None:
    path = None
    if info.is_master:
        path = ckpt.save(run_dir, step, module, optimizer,
                         {"method": cfg.method, "config_hash": train_hash(cfg)}, cfg.keep_checkpoints)
        log.info("checkpoint %s", path)
    D.barrier()
    return path


def write_final(method: Method, run_dir: Path, cfg: TrainConfig, step: int) -> Path:
    """``run_dir/final``: the model via ``arf.models.save_checkpoint``, the head and the training provenance."""
    from safetensors.torch import save_file

    import arf.models

    final = run_dir / "final"
    tmp = run_dir / ".final.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    arf.models.save_checkpoint(method.bundle, tmp)
    meta_path = tmp / "arf.json"
    meta = read_json(meta_path) if meta_path.is_file() else {}
    meta["train"] = {"method": cfg.method, "steps": step, "config_hash": train_hash(cfg), "seed": cfg.seed,
                     "train_set": method.ds.name, "suite": cfg.suite}
    head = method.module.head
    if head is not None:
        with atomic_path(tmp / "head.safetensors") as p:
            save_file({"weight": head.weight.detach().float().cpu().contiguous(),
                       "bias": head.bias.detach().float().cpu().contiguous()}, str(p))
        meta["head"] = {"classnames": list(method.ds.classnames),
                        "reference": method.ds.reference or method.ds.name,
                        "templates": list(method.ds.templates)}
    write_json(meta_path, meta)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    log.info("final model: %s", final)
    return final
