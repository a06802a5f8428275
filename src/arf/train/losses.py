"""Losses. Each returns this rank's share of a global-batch mean, ready for ``backward()`` under DDP.

A loss over a global batch of ``G`` rows split over ``W`` ranks is computed on each rank as
``W * (sum of its own rows' terms) / G``: DDP averages gradients over ranks (divides by ``W``), and the
features were gathered with gradient, so the averaged gradient is exactly that of the global mean. With one
process this is the plain mean. For logging, ``sum over ranks / W`` is the global mean (:func:`global_mean`).

Contrastive targets and duplicates: rows carry a *group* id (the class for class prompts, a hash of the text for
captions and anchors). Two rows with the same group are positives of each other ("multi_positive", soft targets
spread evenly over the positives), because a batch with two dogs and the prompt "a photo of a dog" twice must not
push one dog away from the other's identical-meaning prompt. ``duplicates="ignore"`` keeps FLYP's plain
identity targets (every other column is a negative); with all groups distinct both are the CLIP loss.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from arf.train import distributed as D


def text_groups(texts: Sequence[str]) -> torch.Tensor:
    """A stable 63-bit id per text (same on every rank and run; Python's ``hash`` is salted per process)."""
    ids = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") >> 1 for t in texts]
    return torch.tensor(ids, dtype=torch.long)


def _targets(row_groups: torch.Tensor, col_groups: torch.Tensor, row_offset: int, multi_positive: bool
             ) -> torch.Tensor:
    """Soft targets [rows, cols]: uniform over same-group columns, or one-hot on the paired column."""
    if multi_positive:
        same = (row_groups[:, None] == col_groups[None, :]).float()
        return same / same.sum(dim=1, keepdim=True)
    n = row_groups.shape[0]
    idx = torch.arange(n, device=row_groups.device) + row_offset
    return F.one_hot(idx, col_groups.shape[0]).float()


def _soft_ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum()


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    groups: torch.Tensor | None = None,
    duplicates: str = "multi_positive",
) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows ``image_features[i] <-> text_features[i]`` (already normalised).

    ``logit_scale`` is the scale itself (``exp`` of the model's parameter), as open_clip's ``ClipLoss`` takes it.
    ``groups`` [N]: rows with equal ids are positives of each other (see the module docstring); ``None`` means all
    distinct. Features of all ranks are gathered with gradient; this rank's rows are scored against all columns.
    """
    n = image_features.shape[0]
    if text_features.shape[0] != n:
        raise ValueError(f"{n} image rows but {text_features.shape[0]} text rows")
    if groups is None:
        groups = torch.arange(n, device=image_features.device)
        multi = False
    else:
        groups = groups.to(image_features.device)
        multi = duplicates == "multi_positive"
    info = D.current()
    all_img, offset = D.gather_rows(image_features)
    all_txt, _ = D.gather_rows(text_features)
    all_groups, _ = D.gather_rows(groups, with_grad=False)
    total = all_img.shape[0]
    targets = _targets(groups, all_groups, offset, multi)
    logits_i = logit_scale * image_features @ all_txt.T
    logits_t = logit_scale * text_features @ all_img.T
    rows_sum = (_soft_ce_sum(logits_i, targets) + _soft_ce_sum(logits_t, targets)) / 2
    # A batch without any row (e.g. no image of it has a caption) contributes 0, not 0/0.
    return rows_sum * info.world_size / max(total, 1)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, this rank's share of the global-batch mean."""
    info = D.current()
    n_local = torch.tensor(float(labels.shape[0]), device=logits.device)
    total = D.all_reduce_sum(n_local)
    return F.cross_entropy(logits.float(), labels, reduction="sum") * info.world_size / total.clamp(min=1)


def global_mean(rank_loss: torch.Tensor) -> float:
    """The global-batch value of a loss returned by this module (for logging)."""
    info = D.current()
    return float(D.all_reduce_sum(rank_loss.detach()).item()) / info.world_size
