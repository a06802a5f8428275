"""The one interface every CLIP-like model in ARF is wrapped into.

Any stage (anchors, train, evaluate) only touches ``ClipBundle``: ``model.encode_image``, ``model.encode_text``,
``model.logit_scale``, a tokenizer returning a LongTensor and two PIL -> tensor transforms. ``info`` is a JSON-able
description (architecture + preprocess) that travels with every checkpoint so it can be rebuilt without the
original model id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

Tokenizer = Callable[[Sequence[str]], torch.Tensor]
Transform = Callable[[Any], torch.Tensor]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block (batch norm on its running statistics, no dropout), its own mode
    restored after it, also when the block raises."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@dataclasses.dataclass
class ClipBundle:
    """A CLIP-like dual encoder with its tokenizer and image transforms."""

    model: nn.Module
    tokenizer: Tokenizer
    preprocess_train: Transform
    preprocess_val: Transform
    model_id: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        """Width of the joint embedding space."""
        with torch.no_grad():
            tokens = self.tokenizer(["a"]).to(self.device)
            with eval_mode(self.model):
                return int(self.model.encode_text(tokens).shape[-1])

    def to(self, device: str | torch.device) -> ClipBundle:
        self.model.to(device)
        return self
