"""Text-tower helpers shared by training, zero-shot heads and anchors: prompts without their padding columns."""

from __future__ import annotations

import torch
from torch import nn


def text_pad_id(model: nn.Module) -> int | None:
    """The pad token id of a Hugging Face text tower (which masks padding), else None.

    Dropping all-padding columns is exact only for towers that mask padding (HF encoders with mean/CLS pooling);
    open_clip's causal text transformer needs its full context length, so it gets None.
    """
    text = getattr(model, "text", None)
    config = getattr(text, "config", None)
    pad = getattr(config, "pad_token_id", None)
    return int(pad) if pad is not None else None


def trim_padding(tokens: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """Drop trailing columns that are padding in every row (prompts are far shorter than the context)."""
    if pad_id is None or tokens.ndim != 2 or tokens.shape[1] == 0:
        return tokens
    used = (tokens != pad_id).any(dim=0).nonzero()
    n = int(used.max().item()) + 1 if used.numel() else 1
    return tokens[:, :n]
