"""Losses on hand-computed tiny cases, against open_clip's ClipLoss, and the lr schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from arf.train.losses import classification_loss, contrastive_loss, global_mean, text_groups
from arf.train.optim import lr_at, param_groups


def _lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_contrastive_two_pairs_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(2.0)
    # logits = 2 * img @ txt.T = [[2, 1.2], [0, 1.6]]
    row_i = [2 - _lse(2, 1.2), 1.6 - _lse(0, 1.6)]            # image -> text rows
    row_t = [2 - _lse(2, 0), 1.6 - _lse(1.2, 1.6)]            # text -> image rows (columns of the logits)
    expected = -(sum(row_i) / 2 + sum(row_t) / 2) / 2
    got = contrastive_loss(img, txt, scale)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_multi_positive_same_class_by_hand():
    # Two images of class 0 with two (different) prompts of class 0, one image of class 1.
    img = torch.eye(3)
    txt = torch.eye(3)
    scale = torch.tensor(1.0)
    groups = torch.tensor([0, 0, 1])
    # Each row's logits are a one-hot e_i: log_softmax = 1 - log(e + 2) on the diagonal, -log(e + 2) elsewhere.
    z = math.log(math.e + 2)
    row_same = -(0.5 * (1 - z) + 0.5 * (0 - z))  # class-0 rows: target 0.5 on both class-0 columns
    row_single = -(1 - z)
    expected = (2 * row_same + row_single) / 3     # identical for both directions (symmetric logits)
    got = contrastive_loss(img, txt, scale, groups, "multi_positive")
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # "ignore" = FLYP's identity targets: the other class-0 prompt is a plain negative.
    ignore = contrastive_loss(img, txt, scale, groups, "ignore")
    assert ignore.item() == pytest.approx(-(1 - z), abs=1e-6)
    assert got.item() > ignore.item()


@pytest.mark.parametrize("n,d,seed", [(5, 8, 0), (16, 4, 1), (1, 3, 2)])
def test_symmetric_clip_loss_equals_open_clip(n, d, seed):
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    scale = torch.tensor(14.3)
    ref = ClipLoss()(img, txt, scale)
    assert contrastive_loss(img, txt, scale).item() == pytest.approx(ref.item(), rel=1e-5)
    # With all groups distinct, multi-positive targets are the same loss.
    groups = torch.arange(n) * 7
    assert contrastive_loss(img, txt, scale, groups).item() == pytest.approx(ref.item(), rel=1e-5)


def test_contrastive_gradient_matches_open_clip():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 4, generator=g, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    txt = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    contrastive_loss(F.normalize(a, dim=-1), txt, torch.tensor(10.0)).backward()
    ClipLoss()(F.normalize(b, dim=-1), txt, torch.tensor(10.0)).backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_classification_loss_is_mean_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    expected = -((2 - _lse(2, 0, -1)) + (0.5 - _lse(0.5, 0.5, 3))) / 2
    loss = classification_loss(logits, labels)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert global_mean(loss) == pytest.approx(expected, abs=1e-6)


def test_text_groups_stable_and_equal_for_equal_texts():
    g = text_groups(["a dog", "a cat", "a dog"])
    assert g[0] == g[2] and g[0] != g[1]
    assert g.tolist() == text_groups(["a dog", "a cat", "a dog"]).tolist()
    assert (g >= 0).all()


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 10, 1.0, 2) == pytest.approx(0.5)
    assert lr_at(1, 10, 1.0, 2) == pytest.approx(1.0)
    assert lr_at(2, 10, 1.0, 2) == pytest.approx(1.0)
    assert lr_at(6, 10, 1.0, 2) == pytest.approx(0.5)          # halfway through the cosine
    assert lr_at(10, 10, 1.0, 2, min_lr=0.1) == pytest.approx(0.1)
    assert lr_at(0, 4, 2.0, 0) == pytest.approx(2.0)


def test_no_weight_decay_on_gains_and_biases():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3


def test_empty_batch_contributes_zero_not_nan():
    img = torch.zeros(0, 4, requires_grad=True)
    loss = contrastive_loss(img, torch.zeros(0, 4), torch.tensor(10.0), torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert classification_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0.0
