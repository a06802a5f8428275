"""Shared by tests/test_evaluate_*.py: a CLIP-like model that is right by construction, and sets of images.

Class ``k`` is a solid image of ``PALETTE[k]``; the oracle encodes an image as the one-hot of its nearest palette
colour and a text as the one-hot of the first class name it contains, so its zero-shot prediction is the true
class (100% top-1) whatever the templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from arf.data import LabeledSet

PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (128, 128, 128),
           (0, 0, 0)]
NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta", "grey", "black"]


class OracleCLIP(torch.nn.Module):
    def __init__(self, classnames: list[str]) -> None:
        super().__init__()
        self.classnames = classnames
        self.logit_scale = torch.nn.Parameter(torch.tensor(100.0).log())
        # A real parameter so WiSE-FT has something to interpolate; it does not change predictions.
        self.proj = torch.nn.Linear(3, 3)
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        mean = images.mean(dim=(2, 3)) * 255.0  # [N, 3]
        pal = torch.tensor(PALETTE[: len(self.classnames)], dtype=torch.float32)
        idx = torch.cdist(mean, pal).argmin(dim=1)
        return torch.nn.functional.one_hot(idx, len(self.classnames)).float() * 3.0

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = torch.nn.functional.one_hot(tokens[:, 0], len(self.classnames)).float()
        return out if normalize else out * 2.0


@dataclass
class OracleBundle:
    classnames: list[str]
    model_id: str = "test:oracle"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = OracleCLIP(self.classnames)

    def tokenizer(self, texts: list[str]) -> torch.Tensor:
        ids = [next(i for i, c in enumerate(self.classnames) if c in t) for t in texts]
        return torch.tensor(ids, dtype=torch.long)[:, None]

    def preprocess_val(self, img: Image.Image) -> torch.Tensor:
        x = torch.tensor(list(img.resize((4, 4)).getdata()), dtype=torch.float32) / 255.0
        return x.T.reshape(3, 4, 4)

    preprocess_train = preprocess_val


def make_set(
    root: Path, name: str, role: str, classes: list[int], per_class: int = 2, wrong: int = 0, **kw: Any
) -> LabeledSet:
    """Images of PALETTE[classes[j]] labelled j; the first ``wrong`` images get the next label (misclassified)."""
    root.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for j, c in enumerate(classes):
        for i in range(per_class):
            p = root / f"{name}_{c}_{i}.png"
            Image.new("RGB", (8, 8), PALETTE[c]).save(p)
            paths.append(p.name)
            labels.append(j)
    for i in range(wrong):
        labels[i] = (labels[i] + 1) % len(classes)
    return LabeledSet(
        name=name, role=role, classnames=[NAMES[c] for c in classes], templates=["a photo of a {}.", "{c} art"],
        paths=paths, labels=labels, root=str(root), **kw,
    )
