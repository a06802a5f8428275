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


DUPLICATES = ("multi_positive", "ignore")


class ArfLoss(torch.nn.Module):
    """ARF's objective as an open_clip-style loss module, for a training loop of your own.

    ``loss = L(image, its class prompt) + λ_cap · L(image, its caption) + λ_ret · L(retrieved image, its text)``,
    every ``L`` the symmetric contrastive loss of :func:`contrastive_loss` (features already normalised,
    ``logit_scale`` the scale itself). ``forward(..., output_dict=True)`` returns the *weighted* terms
    ``{"clip_loss", "caption_loss", "anchor_loss"}`` (each anchor term only when its λ > 0), so that
    ``sum(losses.values())`` is the total, as open_clip's training loop sums a loss dict; without it, the total.
    :meth:`anchor_losses` gives the unweighted anchor terms (what ``arf train`` logs).

    Contrastive groups: ``labels`` make the images of one class positives of each other's prompt (duplicates
    ``multi_positive``; ``ignore`` keeps FLYP's identity targets); identical caption or anchor texts are one
    positive set when their texts are given, else every row is its own pair (the plain CLIP loss).

    Under ``torch.distributed`` (your DDP loop) every term scores this rank's rows against all ranks' (gathered
    with gradient) and returns this rank's share of the global-batch mean, so DDP's gradient averaging gives the
    gradient of the loss over the global batch (the module docstring).
    """

    def __init__(self, lambda_cap: float = 0.0, lambda_ret: float = 0.0, duplicates: str = "multi_positive") -> None:
        super().__init__()
        for name, value in (("lambda_cap", lambda_cap), ("lambda_ret", lambda_ret)):
            if not value >= 0:  # NaN fails too
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if duplicates not in DUPLICATES:
            raise ValueError(f"unknown duplicates {duplicates!r}; choose from {', '.join(DUPLICATES)}")
        self.lambda_cap = float(lambda_cap)
        self.lambda_ret = float(lambda_ret)
        self.duplicates = duplicates

    def _pair(self, name: str, img: torch.Tensor | None, txt: torch.Tensor | None, texts: Sequence[str] | None,
              scale: torch.Tensor) -> torch.Tensor:
        if img is None or txt is None:
            raise ValueError(f"{name}: its λ is > 0, so both its image and its text features are needed")
        if img.shape[0] != txt.shape[0] or (texts is not None and len(texts) != txt.shape[0]):
            got = f"{img.shape[0]} image rows, {txt.shape[0]} text rows"
            raise ValueError(f"{name}: {got}{'' if texts is None else f', {len(texts)} texts'}; they must pair up")
        groups = None if texts is None else text_groups(texts).to(img.device)
        return contrastive_loss(img, txt, scale, groups, self.duplicates)

    def anchor_losses(
        self, logit_scale: torch.Tensor, *,
        caption_image_features: torch.Tensor | None = None, caption_features: torch.Tensor | None = None,
        caption_texts: Sequence[str] | None = None,
        anchor_image_features: torch.Tensor | None = None, anchor_text_features: torch.Tensor | None = None,
        anchor_texts: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The unweighted ``caption_loss`` (λ_cap > 0) and ``anchor_loss`` (λ_ret > 0); a term whose λ is 0 is
        neither computed nor returned."""
        out: dict[str, torch.Tensor] = {}
        if self.lambda_cap > 0:
            out["caption_loss"] = self._pair("caption_features", caption_image_features, caption_features,
                                             caption_texts, logit_scale)
        if self.lambda_ret > 0:
            out["anchor_loss"] = self._pair("anchor_text_features", anchor_image_features, anchor_text_features,
                                            anchor_texts, logit_scale)
        return out

    def weighted(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``terms`` with the anchor terms multiplied by their λ (the objective's terms as they are)."""
        lam = {"caption_loss": self.lambda_cap, "anchor_loss": self.lambda_ret}
        return {k: lam[k] * v if k in lam else v for k, v in terms.items()}

    def total(self, objective: dict[str, torch.Tensor], anchor_terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The objective's terms summed, then λ_cap · caption_loss, then λ_ret · anchor_loss (in that order, so
        that ``arf train``'s numbers do not depend on which entry point computed them)."""
        total = sum(objective.values())
        for value in self.weighted(anchor_terms).values():
            total = total + value
        return total  # type: ignore[return-value]

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
        labels: torch.Tensor | None = None, *,
        caption_image_features: torch.Tensor | None = None, caption_features: torch.Tensor | None = None,
        caption_texts: Sequence[str] | None = None,
        anchor_image_features: torch.Tensor | None = None, anchor_text_features: torch.Tensor | None = None,
        anchor_texts: Sequence[str] | None = None, output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """``image_features`` [N, D] against their class prompts' ``text_features`` [N, D] (``labels`` [N]: the
        class of each row); the caption pairs' images default to ``image_features`` (every image captioned)."""
        if labels is not None and labels.shape[0] != image_features.shape[0]:
            raise ValueError(f"labels: {labels.shape[0]} labels for {image_features.shape[0]} image rows")
        groups = labels if labels is not None and self.duplicates == "multi_positive" else None
        clip = contrastive_loss(image_features, text_features, logit_scale, groups, self.duplicates)
        anchors = self.anchor_losses(
            logit_scale,
            caption_image_features=image_features if caption_image_features is None else caption_image_features,
            caption_features=caption_features, caption_texts=caption_texts,
            anchor_image_features=anchor_image_features, anchor_text_features=anchor_text_features,
            anchor_texts=anchor_texts)
        if output_dict:
            return {"clip_loss": clip, **self.weighted(anchors)}
        return self.total({"clip_loss": clip}, anchors)
