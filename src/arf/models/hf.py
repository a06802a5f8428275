"""``hf:<id-or-dir>``: Hugging Face transformers CLIP / SigLIP checkpoints behind ARF's interface.

The wrapper exposes ``encode_image`` / ``encode_text`` / ``logit_scale`` like open_clip; the tokenizer pads to the
model's context length and returns a LongTensor; the transforms follow the checkpoint's image processor (size,
crop, mean, std). Text goes in without an attention mask: CLIP pools at the first end-of-text token behind a
causal mask (padding after it cannot change it) and SigLIP was trained on max-length padding without a mask.
Hub ids download through transformers (users have hubs); tests use tiny random models saved to a folder.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arf.errors import ConfigError
from arf.models.base import ClipBundle

SUPPORTED = {"clip": "CLIPModel", "siglip": "SiglipModel"}
_DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
_DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(out: Any) -> torch.Tensor:
    # transformers >= 5 returns a ModelOutput whose pooler_output is the projected feature; older ones a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFClip(nn.Module):
    """A transformers CLIPModel / SiglipModel with open_clip's encode_* methods."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.hf.logit_scale

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """open_clip's name for transformers' activation checkpointing (``arf train``'s ``grad_checkpointing``)."""
        if not enable:
            self.hf.gradient_checkpointing_disable()
        elif hasattr(self.hf, "activation_checkpointing_enable"):  # transformers >= 5
            self.hf.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        f = _features(self.hf.get_image_features(pixel_values=images))
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        f = _features(self.hf.get_text_features(input_ids=tokens))
        return F.normalize(f, dim=-1) if normalize else f


class HFTokenizer:
    """Callable: list of strings -> LongTensor [N, context_length] (padded to max length, truncated)."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: Sequence[str] | str) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return out["input_ids"].long()

    def save_pretrained(self, dest: str | Path) -> None:
        self.tokenizer.save_pretrained(str(dest))


def preprocess_from_processor(processor: Any, image_size: int) -> dict[str, Any]:
    """size / crop / mean / std / interpolation from a transformers image processor (or defaults)."""
    size = getattr(processor, "size", None) or {}
    crop = getattr(processor, "crop_size", None) or {}
    resize = size.get("shortest_edge") or size.get("height") or image_size
    crop_px = crop.get("height") or size.get("height") or resize
    resample = int(getattr(processor, "resample", 3) or 3)
    return {
        "resize": int(resize),
        "crop": int(crop_px),
        "mean": list(getattr(processor, "image_mean", None) or _DEFAULT_MEAN),
        "std": list(getattr(processor, "image_std", None) or _DEFAULT_STD),
        "interpolation": {2: "bilinear", 3: "bicubic"}.get(resample, "bicubic"),
        "squash": "height" in size,  # SigLIP resizes to a fixed (h, w) without keeping the aspect ratio
    }


def make_hf_transforms(pp: dict[str, Any]) -> tuple[Any, Any]:
    from torchvision import transforms as T

    interp = T.InterpolationMode.BILINEAR if pp["interpolation"] == "bilinear" else T.InterpolationMode.BICUBIC
    norm = T.Normalize(pp["mean"], pp["std"])
    to_rgb = T.Lambda(lambda im: im.convert("RGB"))
    resize = T.Resize((pp["resize"], pp["resize"]) if pp["squash"] else pp["resize"], interpolation=interp)
    val = T.Compose([to_rgb, resize, T.CenterCrop(pp["crop"]), T.ToTensor(), norm])
    train = T.Compose([to_rgb, T.RandomResizedCrop(pp["crop"], scale=(0.9, 1.0), interpolation=interp),
                       T.ToTensor(), norm])
    return train, val


def _model_class(model_type: str) -> Any:
    import transformers

    if model_type not in SUPPORTED:
        raise ConfigError(f"hf model type {model_type!r} is not a dual encoder ARF supports; "
                          f"choose from {', '.join(sorted(SUPPORTED))}")
    return getattr(transformers, SUPPORTED[model_type])


def _context_length(config: Any, tokenizer: Any) -> int:
    n = int(getattr(config.text_config, "max_position_embeddings", 0) or 0)
    tok_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    return min(n, tok_max) if n and 0 < tok_max < 100_000 else (n or 77)


def hf_model(spec: str, device: str | torch.device = "cpu") -> ClipBundle:
    """``hf:<hub id or local dir>`` -> :class:`ClipBundle` (CLIP or SigLIP)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    if not spec:
        raise ConfigError("model 'hf:' needs a hub id or a folder, e.g. hf:openai/clip-vit-base-patch32")
    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model 'hf:{spec}': cannot load a transformers config ({e})") from e
    cls = _model_class(config.model_type)
    model = cls.from_pretrained(spec).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec)
    try:
        processor = AutoImageProcessor.from_pretrained(spec)
    except (OSError, ValueError):
        processor = None  # no preprocessor_config.json: square resize to the vision tower's size
    pp = preprocess_from_processor(processor, int(config.vision_config.image_size))
    info = {"family": "hf", "hf_class": cls.__name__, "hf_config": config.to_dict(), "preprocess": pp,
            "context_length": _context_length(config, tokenizer), "source": spec}
    return _bundle(HFClip(model), HFTokenizer(tokenizer, info["context_length"]), info, f"hf:{spec}", device)


def _bundle(model: HFClip, tokenizer: HFTokenizer, info: dict[str, Any], model_id: str,
            device: str | torch.device) -> ClipBundle:
    train, val = make_hf_transforms(info["preprocess"])
    model.to(device)
    return ClipBundle(model, tokenizer, train, val, model_id, copy.deepcopy(info))


def bundle_from_info(info: dict[str, Any], path: str) -> ClipBundle:
    """Rebuild an ``hf`` bundle from a checkpoint's ``arf.json`` (weights are loaded by the caller)."""
    import transformers
    from transformers import AutoTokenizer

    cls = getattr(transformers, info["hf_class"])
    cfg_dict = dict(info["hf_config"])
    config = cls.config_class.from_dict(cfg_dict)
    with torch.random.fork_rng(devices=[]):
        model = cls(config).eval()
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return _bundle(HFClip(model), HFTokenizer(tokenizer, int(info["context_length"])), info, path, "cpu")
