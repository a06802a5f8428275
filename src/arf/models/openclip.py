"""open_clip-backed models: build from an open_clip model config, ``arf:tiny-clip`` and ``openclip:<name>@<tag>``.

Every model whose ``info["family"]`` is ``"open_clip"`` keeps the exact ``model_cfg`` / ``preprocess_cfg`` that
open_clip itself writes in ``open_clip_config.json``, so ARF checkpoints load in plain open_clip
(``create_model_and_transforms("local-dir:<dir>")``).
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import Any

import torch

from arf.errors import ConfigError
from arf.models.base import ClipBundle

log = logging.getLogger(__name__)

OPEN_CLIP = "open_clip"

# A tiny CLIP for unit tests of every stage: ~3.5M params (mostly the 49k-token embedding), 32 px, builds in
# well under a second with no network. Shapes follow open_clip's CLIPVisionCfg / CLIPTextCfg field names.
TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_CLIP_PREPROCESS: dict[str, Any] = {
    "size": 32,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}
TINY_CLIP_SEED = 0


@functools.lru_cache(maxsize=8)
def _simple_tokenizer(context_length: int) -> Any:
    # Loading the BPE merges takes ~0.2 s; tokenizers are stateless, so one per context length is shared.
    import open_clip

    return open_clip.SimpleTokenizer(context_length=context_length)


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(name: str, context_length: int) -> Any:
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(name, context_length=context_length)


def make_tokenizer(model_cfg: dict[str, Any]) -> Any:
    """The open_clip tokenizer a model config implies (BPE for CLIP text towers, HF for ``hf_tokenizer_name``)."""
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_tokenizer_name"):
        return _hf_tokenizer(text_cfg["hf_tokenizer_name"], context_length)
    return _simple_tokenizer(context_length)


def make_transforms(preprocess_cfg: dict[str, Any]) -> tuple[Any, Any]:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(**{k: tuple(v) if isinstance(v, list) else v for k, v in preprocess_cfg.items()})
    return image_transform_v2(cfg, is_train=True), image_transform_v2(cfg, is_train=False)


def build_open_clip_model(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """Instantiate an open_clip model from a config without loading any tower weights (never the hub)."""
    from open_clip import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    is_hf_text = "hf_model_name" in cfg.get("text_cfg", {})
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if is_hf_text:
        cfg["text_cfg"]["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or is_hf_text
    cls = CustomTextCLIP if custom_text else CLIP
    return cls(**cfg)


def bundle_from_cfg(
    model_cfg: dict[str, Any],
    preprocess_cfg: dict[str, Any],
    model_id: str,
    *,
    model: torch.nn.Module | None = None,
    device: str | torch.device = "cpu",
    extra_info: dict[str, Any] | None = None,
) -> ClipBundle:
    """Wrap an open_clip model (built from ``model_cfg`` unless given) as a :class:`ClipBundle`."""
    from open_clip import set_model_preprocess_cfg

    if model is None:
        model = build_open_clip_model(model_cfg)
    set_model_preprocess_cfg(model, dict(preprocess_cfg))
    model.to(device)
    train_tf, val_tf = make_transforms(preprocess_cfg)
    info = {"family": OPEN_CLIP, "model_cfg": copy.deepcopy(model_cfg), "preprocess_cfg": dict(preprocess_cfg)}
    info.update(extra_info or {})
    return ClipBundle(model, make_tokenizer(model_cfg), train_tf, val_tf, model_id, info)


def tiny_clip(device: str | torch.device = "cpu", seed: int = TINY_CLIP_SEED) -> ClipBundle:
    """A tiny randomly initialised open_clip CLIP; the same weights for the same seed, every time."""
    # fork_rng: building the model must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_open_clip_model(TINY_CLIP_CFG)
    return bundle_from_cfg(TINY_CLIP_CFG, TINY_CLIP_PREPROCESS, "arf:tiny-clip", model=model, device=device,
                           extra_info={"seed": seed})


def split_openclip_spec(spec: str) -> tuple[str, str | None]:
    """``ViT-B-16@openai`` -> (``ViT-B-16``, ``openai``); the last ``@`` splits, so ``hf-hub:org/repo`` has none."""
    if not spec:
        raise ConfigError("model 'openclip:' needs a name, e.g. openclip:ViT-B-16@openai")
    name, sep, pretrained = spec.rpartition("@")
    if not sep:
        return spec, None
    if not name:
        raise ConfigError(f"model 'openclip:{spec}': empty model name before '@'")
    return name, pretrained or None


def _model_cfg_for(name: str, pretrained: str | None) -> dict[str, Any]:
    """The model_cfg open_clip used for ``name`` (so a saved checkpoint reloads in plain open_clip)."""
    import json
    from pathlib import Path

    import open_clip
    from open_clip.factory import _get_hf_config, parse_model_name

    schema, ident = parse_model_name(name)
    if schema == "local-dir":
        return json.loads((Path(ident) / "open_clip_config.json").read_text())["model_cfg"]
    if schema == "hf-hub":
        return _get_hf_config(ident)["model_cfg"]
    cfg = copy.deepcopy(open_clip.get_model_config(name.replace("/", "-")))
    if pretrained:
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
        if tag_cfg.get("quick_gelu"):
            cfg["quick_gelu"] = True
    return cfg


def openclip_model(spec: str, device: str | torch.device = "cpu") -> ClipBundle:
    """``openclip:<name>[@<pretrained tag or weights file>]``; ``name`` may be ``hf-hub:org/repo`` or ``local-dir:``.

    Tags and ``hf-hub:`` download through open_clip (users have hubs); tests use local dirs and files only.
    """
    import open_clip

    name, pretrained = split_openclip_spec(spec)
    schema, _ = open_clip.factory.parse_model_name(name)
    if schema is None and open_clip.get_model_config(name.replace("/", "-")) is None:
        raise ConfigError(f"unknown open_clip model {name!r}; choose from {', '.join(open_clip.list_models())}")
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device=device)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model 'openclip:{spec}': {e}") from e
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    preprocess_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_cfg.items()}
    model_cfg = _model_cfg_for(name, pretrained)
    return bundle_from_cfg(model_cfg, preprocess_cfg, f"openclip:{spec}", model=model, device=device)
