"""``create_model(model_id)``: one entry point for every CLIP-like model, chosen by prefix.

``openclip:<name>@<pretrained>``, ``hf:<id-or-dir>``, ``arf:<name>`` (``mini-clip``, ``tiny-clip``) or a path to a
checkpoint folder / weights file written by :func:`arf.models.save_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from arf.errors import ConfigError
from arf.models.base import ClipBundle
from arf.registry import Registry

Builder = Callable[[str, "str | torch.device"], ClipBundle]

# prefix -> builder(rest_of_id, device)
PREFIXES: Registry[Builder] = Registry("model prefix")
# arf:<name> -> builder(device)
ARF_MODELS: Registry[Callable[[str | torch.device], ClipBundle]] = Registry("arf model")

PREFIX_HELP = {
    "openclip": "openclip:<name>@<pretrained>",
    "hf": "hf:<id-or-dir>",
}


@PREFIXES.register("openclip")
def _openclip(rest: str, device: str | torch.device) -> ClipBundle:
    from arf.models.openclip import openclip_model

    return openclip_model(rest, device=device)


@PREFIXES.register("hf")
def _hf(rest: str, device: str | torch.device) -> ClipBundle:
    from arf.models.hf import hf_model

    return hf_model(rest, device=device)


@PREFIXES.register("arf")
def _arf(rest: str, device: str | torch.device) -> ClipBundle:
    if rest not in ARF_MODELS:
        raise ConfigError(f"unknown model 'arf:{rest}'; choose from {', '.join(list_models())}")
    return ARF_MODELS.get(rest)(device)


@ARF_MODELS.register("tiny-clip")
def _tiny(device: str | torch.device) -> ClipBundle:
    from arf.models.openclip import tiny_clip

    return tiny_clip(device=device)


@ARF_MODELS.register("mini-clip")
def _mini(device: str | torch.device) -> ClipBundle:
    from arf.models.mini_clip import load_mini_clip

    return load_mini_clip(device=device)


@ARF_MODELS.register("mini-clip-towers")
def _mini_towers(device: str | torch.device) -> ClipBundle:
    from arf.models.mini_clip import mini_clip_towers

    return mini_clip_towers(device=device)


def list_models() -> list[str]:
    """Model ids and id patterns ``create_model`` accepts."""
    return [f"arf:{n}" for n in ARF_MODELS.names()] + [PREFIX_HELP[p] for p in ("openclip", "hf")] + [
        "<checkpoint dir or .safetensors file>"
    ]


def is_registered_id(model_id: str) -> bool:
    """Whether ``model_id`` names a model through a registered prefix (``arf:``, ``openclip:``, ``hf:``, …) rather
    than a checkpoint path; a path wins over a prefix only when no prefix is registered under that name."""
    prefix, sep, _ = model_id.partition(":")
    return bool(sep) and prefix in PREFIXES


def _looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", ".", "~")) or Path(model_id).expanduser().exists()


def create_model(model_id: str, device: str | torch.device = "cpu") -> ClipBundle:
    """Build the model named by ``model_id`` (see module doc); unknown ids raise :class:`ConfigError`."""
    if not isinstance(model_id, str) or not model_id:
        raise ConfigError(f"unknown model {model_id!r}; choose from {', '.join(list_models())}")
    if is_registered_id(model_id):  # not "C:\\..." style or plain paths
        prefix, _, rest = model_id.partition(":")
        bundle = PREFIXES.get(prefix)(rest, device)
    elif _looks_like_path(model_id):
        from arf.models.checkpoint import load_checkpoint

        bundle = load_checkpoint(model_id, device=device)
        bundle.model_id = model_id
    else:
        raise ConfigError(f"unknown model {model_id!r}; choose from {', '.join(list_models())}")
    return bundle
