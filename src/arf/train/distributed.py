"""torchrun + DDP plumbing: world info from the environment, gathering features with gradient.

Contrastive losses need every rank's features as negatives. :func:`gather_rows` all-gathers them *with* gradient
(open_clip's ``gather_with_grad``): the backward all-reduces the incoming gradient, so each rank's features get
the gradient from every rank's loss terms. Each rank then computes the loss only for its own rows ("local loss")
scaled so that DDP's gradient averaging yields exactly the gradient of the global-batch loss (tested against
one process on the global batch). Ranks may hold different row counts (bad images are skipped), so rows are
padded to the largest rank before gathering.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def world_info_from_env() -> DistInfo:
    """Rank, world size and local rank as set by torchrun (1 process when unset)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); no-op for one process."""
    info = world_info_from_env()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return info


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather equal-shaped tensors; backward sums the gradient over ranks and returns this rank's slice.

    Written here rather than ``torch.distributed.nn.all_gather`` because gloo lacks the reduce-scatter that one
    uses in its backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def all_sizes(n: int, device: torch.device) -> list[int]:
    t = torch.tensor([n], device=device, dtype=torch.long)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(x.item()) for x in out]


def gather_rows(x: torch.Tensor, with_grad: bool = True) -> tuple[torch.Tensor, int]:
    """``(rows of every rank concatenated in rank order, offset of this rank's rows)``; identity for 1 process."""
    info = current()
    if not info.enabled:
        return x, 0
    sizes = all_sizes(x.shape[0], x.device)
    m = max(sizes)
    pad = torch.zeros((m - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    xp = torch.cat([x, pad]) if m > x.shape[0] else x
    if with_grad:
        stacked = _GatherWithGrad.apply(xp)
    else:
        parts = [torch.empty_like(xp) for _ in range(info.world_size)]
        dist.all_gather(parts, xp.contiguous())
        stacked = torch.stack(parts)
    rows = torch.cat([stacked[r, : sizes[r]] for r in range(info.world_size)])
    return rows, sum(sizes[: info.rank])


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (no gradient); identity for 1 process."""
    if not current().enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def cleanup(synchronize: bool = False) -> None:
    """Destroy the process group. ``synchronize`` first waits for every rank (after a successful run): a rank that
    tears gloo down while another still has work in flight can abort that one ("terminate called without an
    active exception", seen once in CI). Never after an error, where the other ranks may never reach the barrier."""
    if dist.is_available() and dist.is_initialized():
        if synchronize and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
