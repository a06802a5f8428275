"""CPU budgets: run a frozen image-tower prefix without autograd and cache its output (text padding: arf.models.text).

With ``freeze_image_blocks: N`` the stem and the first N blocks never change, so their output for an image is a
constant. :class:`TrunkSplit` cuts the image tower there: ``prefix`` (run under ``no_grad``; with no augmentation
its output is computed once per finetuning image and cached) and ``suffix`` (trained). On the offline mini-clip
(EfficientNet-Lite0, 7 stages, 112 px, batch 64, 2 busy cores) the image forward + backward of a step went from
17.3 s (full tower) to 2.4 s (5 stages frozen and cached); see the issue report for the measurement.

Only towers whose forward we can split exactly are supported (timm EfficientNet-style trunks inside open_clip's
``TimmModel``); for others (e.g. open_clip's ViT with its many pooling variants) :func:`find_split` returns
``None`` and the frozen blocks are simply excluded from the optimizer.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class TrunkSplit:
    """``suffix(prefix(x)) == visual(x)`` for a timm trunk (conv_stem, bn1, blocks, conv_head, bn2) + head."""

    def __init__(self, visual: nn.Module, n_blocks: int) -> None:
        self.visual = visual
        self.trunk = visual.trunk
        self.n = n_blocks

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        h = t.bn1(t.conv_stem(x))
        for blk in t.blocks[: self.n]:
            h = blk(h)
        return h

    def suffix(self, h: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        for blk in t.blocks[self.n:]:
            h = blk(h)
        h = t.forward_head(t.bn2(t.conv_head(h)))
        return self.visual.head(h)


def find_split(model: nn.Module, n_blocks: int) -> TrunkSplit | None:
    """A split after ``n_blocks`` blocks if the image tower is a supported timm trunk, else None."""
    visual = getattr(model, "visual", None)
    trunk = getattr(visual, "trunk", None)
    needed = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "forward_head")
    if n_blocks <= 0 or trunk is None or not all(hasattr(trunk, a) for a in needed) or not hasattr(visual, "head"):
        return None
    if n_blocks >= len(trunk.blocks):
        return None
    return TrunkSplit(visual, n_blocks)


@torch.no_grad()
def encode_prefix(split: TrunkSplit, ds: Any, transform: Any, device: torch.device, batch_size: int = 64,
                  max_bytes: int = 4 << 30) -> torch.Tensor | None:
    """The prefix output for every image of ``ds`` (eval transform), or None if it would exceed ``max_bytes``.

    ``ds`` is a labelled set or an ``ImageDataset`` (e.g. the anchor images). Rows of unreadable images (counted
    and skipped by the loader) stay NaN, so callers can tell them apart.
    """
    import arf.data

    data = ds if isinstance(ds, arf.data.ImageDataset) else arf.data.ImageDataset.from_set(ds, transform)
    if data.transform is None:
        data.transform = transform
    out: torch.Tensor | None = None
    for x, _, idx in arf.data.make_loader(data, batch_size=batch_size):
        h = split.prefix(x.to(device)).float().cpu()
        if out is None:
            need = len(data) * h[0].numel() * 4
            if need > max_bytes:
                log.info("not caching frozen image activations: %.1f GB > %.1f GB", need / 1e9, max_bytes / 1e9)
                return None
            out = torch.full((len(data), *h.shape[1:]), float("nan"))
        out[idx] = h
    return out
