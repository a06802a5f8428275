"""Losses on hand-computed tiny cases, against open_clip's ClipLoss, and the lr schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from arf.train.losses import ArfLoss, classification_loss, contrastive_loss, global_mean, text_groups
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


# ArfLoss: the objective as one open_clip-style module (examples/open_clip_loop.py uses it in a loop of its own).

def _feats(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_arf_loss_without_anchor_weights_is_open_clips_clip_loss():
    from open_clip.loss import ClipLoss

    img, txt, scale = _feats(6), _feats(6, seed=1), torch.tensor(14.0)
    ours = ArfLoss()(img, txt, scale)
    assert ours.item() == pytest.approx(ClipLoss()(img, txt, scale).item(), rel=1e-6)
    assert ArfLoss()(img, txt, scale, output_dict=True) == {"clip_loss": ours}


def test_arf_loss_is_clip_plus_weighted_anchor_terms_and_its_dict_sums_to_the_total():
    img, txt, scale = _feats(6), _feats(6, seed=1), torch.tensor(10.0)
    labels = torch.tensor([0, 1, 1, 2, 0, 3])
    cap, a_img, a_txt = _feats(6, seed=2), _feats(4, seed=3), _feats(4, seed=4)
    caps = ["a dog on grass", "a cat", "a cat", "a red car", "a dog", "a boat"]
    a_texts = ["flag of france", "a sketch of a cat", "flag of france", "an old boat"]
    loss = ArfLoss(lambda_cap=0.3, lambda_ret=0.5)
    kw = dict(caption_features=cap, caption_texts=caps, anchor_image_features=a_img, anchor_text_features=a_txt,
              anchor_texts=a_texts)
    clip = contrastive_loss(img, txt, scale, labels)
    c = contrastive_loss(img, cap, scale, text_groups(caps))
    a = contrastive_loss(a_img, a_txt, scale, text_groups(a_texts))
    # The identical texts ("a cat", "flag of france") are positives of each other, not negatives.
    assert a.item() != pytest.approx(contrastive_loss(a_img, a_txt, scale).item())
    total = loss(img, txt, scale, labels, **kw)
    assert torch.equal(total, clip + 0.3 * c + 0.5 * a)
    terms = loss(img, txt, scale, labels, **kw, output_dict=True)
    assert list(terms) == ["clip_loss", "caption_loss", "anchor_loss"]
    assert torch.equal(terms["caption_loss"], 0.3 * c) and torch.equal(terms["anchor_loss"], 0.5 * a)
    assert torch.equal(sum(terms.values()), total)
    # Unweighted, as arf train logs them; a term whose λ is 0 is not computed.
    raw = loss.anchor_losses(scale, caption_image_features=img, **kw)
    assert torch.equal(raw["caption_loss"], c) and torch.equal(raw["anchor_loss"], a)
    assert list(ArfLoss(lambda_ret=0.5).anchor_losses(scale, caption_image_features=img, **kw)) == ["anchor_loss"]
    # FLYP's identity targets when asked for.
    ignore = ArfLoss(duplicates="ignore")(img, txt, scale, labels)
    assert torch.equal(ignore, contrastive_loss(img, txt, scale))


def test_arf_loss_caption_pairs_may_be_a_subset_and_gradients_reach_every_input():
    img = _feats(5).requires_grad_()
    txt, cap, a_img, a_txt = _feats(5, seed=1), _feats(3, seed=2), _feats(4, seed=3), _feats(4, seed=4)
    a_img.requires_grad_()
    has = torch.tensor([True, False, True, True, False])  # images without a caption get no caption term
    loss = ArfLoss(lambda_cap=1.0, lambda_ret=1.0)(img, txt, torch.tensor(10.0), caption_image_features=img[has],
                                                   caption_features=cap, anchor_image_features=a_img,
                                                   anchor_text_features=a_txt)
    loss.backward()
    assert img.grad is not None and a_img.grad is not None
    assert torch.isfinite(img.grad).all() and a_img.grad.abs().sum() > 0


@pytest.mark.parametrize(("kwargs", "call", "match"), [
    ({"lambda_cap": -0.1}, {}, "lambda_cap must be >= 0"),
    ({"lambda_ret": float("nan")}, {}, "lambda_ret must be >= 0"),
    ({"duplicates": "merge"}, {}, "unknown duplicates 'merge'; choose from multi_positive, ignore"),
    ({"lambda_ret": 0.5}, {}, "anchor_text_features: its λ is > 0"),
    ({"lambda_cap": 0.5}, {"anchor_image_features": _feats(2)}, "caption_features: its λ is > 0"),
    ({"lambda_ret": 0.5}, {"anchor_image_features": _feats(3), "anchor_text_features": _feats(2)},
     "anchor_text_features: 3 image rows, 2 text rows"),
    ({"lambda_ret": 0.5}, {"anchor_image_features": _feats(2), "anchor_text_features": _feats(2),
                           "anchor_texts": ["one"]}, "2 image rows, 2 text rows, 1 texts"),
    ({}, {"labels": torch.tensor([0, 1])}, "labels: 2 labels for 4 image rows"),
])
def test_arf_loss_refuses_bad_arguments_naming_them(kwargs, call, match):
    with pytest.raises(ValueError, match=match):
        ArfLoss(**kwargs)(_feats(4), _feats(4, seed=1), torch.tensor(10.0), **call)
