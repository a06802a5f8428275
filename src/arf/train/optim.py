"""AdamW with decay only on matrices, and a warmup + cosine schedule that is a pure function of the step.

Gains, biases, embeddings' scalars and ``logit_scale`` (``p.dim() < 2``) get no weight decay, as in nanoGPT and
open_clip. The schedule keeps no state (the lr is recomputed from the step), so resuming needs only the step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from arf.train.config import TrainConfig


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Over every parameter that may train in some phase; frozen ones (no ``.grad``) are skipped by AdamW."""
    return torch.optim.AdamW(param_groups(module, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps)


def lr_at(step: int, steps: int, peak: float, warmup: int, min_lr: float = 0.0) -> float:
    """Linear warmup over ``warmup`` steps to ``peak``, then cosine decay to ``min_lr`` at ``steps``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
