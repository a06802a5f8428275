"""Model layer: one interface (:class:`ClipBundle`) for open_clip, Hugging Face and ARF's offline CLIP models."""

from arf.models.base import ClipBundle
from arf.models.checkpoint import load_checkpoint, save_checkpoint
from arf.models.factory import create_model, list_models

__all__ = ["ClipBundle", "create_model", "list_models", "load_checkpoint", "save_checkpoint"]
