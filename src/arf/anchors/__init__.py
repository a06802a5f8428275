"""Anchors of ARF: caption anchors (TCAG, ``arf caption``) and retrieved image–text anchors (ITAR,
``arf pool embed`` → ``arf pool index`` → ``arf retrieve``). Heavy imports happen inside the functions."""

from __future__ import annotations

from arf.anchors.caption import CaptionResult, run_caption, show_captions
from arf.anchors.captioners import CAPTIONERS, Captioner, compose_caption, create_captioner
from arf.anchors.config import CaptionConfig, IndexConfig, PoolConfig, RetrieveConfig
from arf.anchors.index import build_index, build_pool_index, load_index
from arf.anchors.pool import embed_pool, load_embeddings, open_pool_image
from arf.anchors.retrieve import STRATEGIES, load_anchors, retrieve, show_anchors
from arf.anchors.sources import ImageSet, resolve_set

__all__ = [
    "CAPTIONERS", "STRATEGIES", "CaptionConfig", "CaptionResult", "Captioner", "ImageSet", "IndexConfig",
    "PoolConfig", "RetrieveConfig", "build_index", "build_pool_index", "compose_caption", "create_captioner",
    "embed_pool", "load_anchors", "load_embeddings", "load_index", "open_pool_image", "resolve_set", "retrieve",
    "run_caption", "show_anchors", "show_captions",
]
