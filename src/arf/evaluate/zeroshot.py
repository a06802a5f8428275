"""Classification heads: zero-shot text heads and trained heads saved with checkpoints.

Every head maps L2-normalised image features to logits with ``features @ weight.T + bias``, as WiSE-FT's
``ClassificationHead(normalize=True)``. A zero-shot head's weight is ``logit_scale.exp() * text_embeddings``
(bias 0), so its logits equal the CLIP logits and it has the same scale as a head trained from it (``lp``/``ft``
initialise theirs this way), which is what makes interpolating heads in WiSE-FT meaningful.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from arf.config import config_hash
from arf.errors import InputFileError
from arf.io import atomic_path, read_json
from arf.models.base import eval_mode

log = logging.getLogger(__name__)

HEAD_FILE = "head.safetensors"
META_FILE = "arf.json"


@dataclass
class Head:
    """A linear classifier over normalised image features: ``weight`` [C, D], ``bias`` [C]."""

    weight: torch.Tensor
    bias: torch.Tensor
    classnames: list[str]
    # "zeroshot" (built from text) or "trained" (loaded from a checkpoint), recorded with each evaluation.
    kind: str = "zeroshot"
    # Name of the label space (e.g. "imagenet", "offline-train"); lets label_map sets (ObjectNet) find their head.
    reference: str | None = None
    templates: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.weight.shape[0] != len(self.classnames):
            raise ValueError(f"head weight {tuple(self.weight.shape)} does not match {len(self.classnames)} classes")
        if self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"head bias {tuple(self.bias.shape)} does not match weight {tuple(self.weight.shape)}")

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits for image features (normalised here, so raw ``encode_image`` output is fine)."""
        feats = F.normalize(features.float(), dim=-1)
        return feats @ self.weight.float().T.to(feats.device) + self.bias.float().to(feats.device)


def fill_template(template: str, classname: str) -> str:
    """Templates use ``{}`` (open_clip / clip_benchmark) or ``{c}`` for the class name."""
    return template.replace("{c}", "{}").format(classname)


def is_image_tower_key(name: str) -> bool:
    """open_clip's naming: the image tower lives under ``visual``; the rest (text tower, projections, logit scale)
    is what the zero-shot head is computed from."""
    return name.startswith("visual.") or ".visual." in name


def weights_fingerprint(model: torch.nn.Module, text_only: bool = False) -> str:
    """Hash of a model's tensors (names, dtypes and bytes); ``text_only`` skips the image tower (``visual.*``).

    Evaluations and zero-shot heads are keyed by weights, not model ids: WiSE-FT models share an id, and a
    rebuilt base model may not be bit-identical to the one evaluated before.
    """
    from arf.models.checkpoint import state_fingerprint

    return state_fingerprint((name, t) for name, t in model.state_dict().items()
                             if not (text_only and is_image_tower_key(name)))


def text_fingerprint(model: torch.nn.Module) -> str:
    """What a zero-shot head depends on: every non-visual tensor (text tower, projection, logit scale)."""
    return weights_fingerprint(model, text_only=True)


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().float().contiguous().numpy())
    return h.hexdigest()[:16]


def _compute_head(bundle: Any, classnames: Sequence[str], templates: Sequence[str], device: str) -> torch.Tensor:
    from open_clip import build_zero_shot_classifier

    from arf.models.text import text_pad_id, trim_padding

    fill = [lambda c, t=t: fill_template(t, c) for t in templates]
    pad = text_pad_id(bundle.model)
    tokenizer = bundle.tokenizer
    if pad is not None:
        # Prompts are far shorter than the context (MiniLM: 32 tokens); a tower that masks padding gives the same
        # embeddings without the all-padding columns, at ~2.3x the speed on 300 classes x 5 templates. Heads are
        # rebuilt at every WiSE-FT alpha of a model whose text tower was trained, so this is most of a sweep's time.
        def tokenizer(texts: Any) -> torch.Tensor:
            return trim_padding(bundle.tokenizer(texts), pad)
    with eval_mode(bundle.model):
        # [D, C]: per-template normalised embeddings, averaged over templates, renormalised.
        weights = build_zero_shot_classifier(
            bundle.model, tokenizer, list(classnames), fill, num_classes_per_batch=10, device=device
        )
    return weights.T.contiguous().float().cpu()


class HeadCache:
    """Zero-shot heads keyed by (text weights, class names, templates); in memory and optionally on disk."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._mem: dict[str, torch.Tensor] = {}

    def key(self, bundle: Any, classnames: Sequence[str], templates: Sequence[str]) -> str:
        return config_hash(text_fingerprint(bundle.model), list(classnames), list(templates))

    def get_or_build(
        self, bundle: Any, classnames: Sequence[str], templates: Sequence[str], device: str = "cpu"
    ) -> torch.Tensor:
        from safetensors.torch import load_file, save_file

        key = self.key(bundle, classnames, templates)
        if key in self._mem:
            return self._mem[key]
        path = self.cache_dir / f"zeroshot_head_{key}.safetensors" if self.cache_dir is not None else None
        if path is not None and path.is_file():
            emb = load_file(str(path))["text_embeddings"]
        else:
            emb = _compute_head(bundle, classnames, templates, device)
            if path is not None:
                with atomic_path(path) as tmp:
                    save_file({"text_embeddings": emb}, str(tmp))
        self._mem[key] = emb
        return emb


_DEFAULT_CACHE = HeadCache()


def zeroshot_head(
    bundle: Any,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    device: str = "cpu",
    cache: HeadCache | None = None,
    reference: str | None = None,
) -> Head:
    """The zero-shot head of ``bundle`` for ``classnames`` × ``templates`` (cached by weights, names, templates)."""
    if not classnames:
        raise ValueError("zeroshot_head needs at least one class name")
    if not templates:
        raise ValueError("zeroshot_head needs at least one template")
    emb = (cache or _DEFAULT_CACHE).get_or_build(bundle, classnames, templates, device)
    scale = float(bundle.model.logit_scale.detach().exp().cpu())
    return Head(
        weight=emb * scale,
        bias=torch.zeros(emb.shape[0]),
        classnames=list(classnames),
        kind="zeroshot",
        reference=reference,
        templates=list(templates),
    )


def head_meta(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The head description in a checkpoint's ``arf.json``: ``{"head": {"classnames": [...], ...}}``.

    ``head_classnames`` at the top level is read too, so a checkpoint that stores only the names still works.
    """
    head = meta.get("head")
    if isinstance(head, dict) and head.get("classnames"):
        return head
    if meta.get("head_classnames"):
        return {"classnames": meta["head_classnames"], "reference": meta.get("head_reference")}
    return None


def load_trained_head(checkpoint_dir: str | Path) -> Head | None:
    """The trained head saved in ``checkpoint_dir`` (``head.safetensors`` + class names in ``arf.json``), or None
    (also for model ids such as ``arf:mini-clip``, which are not folders)."""
    from safetensors.torch import load_file

    d = Path(checkpoint_dir)
    if d.is_file():  # a weights file inside a checkpoint folder
        d = d.parent
    if not d.is_dir() or not (d / HEAD_FILE).is_file():
        return None
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise InputFileError(f"{d / HEAD_FILE} has no {META_FILE} beside it naming the head's classes")
    info = head_meta(read_json(meta_path))
    if info is None:
        raise InputFileError(f"{meta_path}: a trained head is present but no head classnames are recorded")
    tensors = load_file(str(d / HEAD_FILE))
    if "weight" not in tensors:
        raise InputFileError(f"{d / HEAD_FILE}: no 'weight' tensor (found {', '.join(sorted(tensors))})")
    weight = tensors["weight"].float()
    bias = tensors.get("bias", torch.zeros(weight.shape[0])).float()
    try:
        return Head(
            weight=weight,
            bias=bias,
            classnames=list(info["classnames"]),
            kind="trained",
            reference=info.get("reference"),
            templates=list(info.get("templates") or []),
        )
    except ValueError as e:
        raise InputFileError(f"{d / HEAD_FILE}: {e}") from None


def head_info(head: Head) -> dict[str, Any]:
    """What ``arf.json`` records about a trained head (under the key ``head``)."""
    return {"classnames": list(head.classnames), "reference": head.reference, "templates": list(head.templates)}


def write_head_file(head: Head, checkpoint_dir: str | Path) -> None:
    """Write ``head.safetensors`` (``weight`` [C, D], ``bias`` [C]) atomically."""
    from safetensors.torch import save_file

    with atomic_path(Path(checkpoint_dir) / HEAD_FILE) as tmp:
        save_file({"weight": head.weight.contiguous(), "bias": head.bias.contiguous()}, str(tmp))


def save_head(head: Head, checkpoint_dir: str | Path) -> None:
    """Write ``head.safetensors`` and record the head's classes in ``arf.json`` (merged into what is there)."""
    from arf.io import write_json

    d = Path(checkpoint_dir)
    write_head_file(head, d)
    meta_path = d / META_FILE
    meta = read_json(meta_path) if meta_path.is_file() else {}
    meta["head"] = head_info(head)
    write_json(meta_path, meta)
