"""``grad_checkpointing: true``: recompute activations in the backward pass instead of keeping them.

open_clip's models know how (``set_grad_checkpointing``: its ViT and text transformer, timm trunks, Hugging Face
text encoders), and so does ``hf:``'s wrapper (transformers' activation checkpointing); the split image tower of
the frozen-prefix path (:class:`arf.models.trunk.TrunkSplit`) follows the trunk's flag. A model that knows neither
is refused rather than trained with the full activation memory the user asked to avoid.
"""

from __future__ import annotations

import logging

from torch import nn

from arf.errors import ConfigError

log = logging.getLogger(__name__)


def enable_grad_checkpointing(model: nn.Module, model_id: str, freeze_bn_stats: bool) -> None:
    if not hasattr(model, "set_grad_checkpointing"):
        raise ConfigError(f"grad_checkpointing: model {model_id} ({type(model).__name__}) cannot recompute its "
                          f"activations (it has no set_grad_checkpointing)")
    model.set_grad_checkpointing(True)
    log.info("grad checkpointing on: %s recomputes its trained blocks' activations in the backward pass", model_id)
    if not freeze_bn_stats and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        # The recomputed forward runs each BatchNorm in training mode a second time.
        log.warning("grad_checkpointing with freeze_bn_stats false: BatchNorm running statistics are updated twice "
                    "per step in the recomputed blocks")
