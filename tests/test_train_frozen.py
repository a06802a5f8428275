"""Frozen parts: which parameters freeze, the split image tower with cached activations, text padding trim."""

from __future__ import annotations

import pytest
import torch

import arf.data
import arf.models
from arf.models.text import trim_padding
from arf.models.trunk import encode_prefix, find_split
from arf.train.config import TrainConfig
from arf.train.methods import FineTune, Flyp
from train_fixtures import effnet_bundle as make_effnet_bundle
from train_fixtures import make_benchmark


@pytest.fixture(scope="module")
def effnet_bundle():
    """A small open_clip model with a timm EfficientNet trunk (the mini-clip image tower's architecture)."""
    return make_effnet_bundle()


def test_freeze_blocks_on_vit_freezes_stem_and_first_blocks_only(tmp_path):
    bundle = arf.models.create_model("arf:tiny-clip")
    ds = arf.data.get_suite("offline", make_benchmark(tmp_path / "b", per_class=2)).get("train")
    m = Flyp(TrainConfig(method="flyp", freeze_image_blocks=1, freeze_text_blocks=1), bundle, ds)
    m.set_trainable(m.phases(1)[0])
    frozen = {n for n, p in bundle.model.named_parameters() if not p.requires_grad}
    assert {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.weight",
            "visual.transformer.resblocks.0.attn.in_proj_weight", "token_embedding.weight", "positional_embedding",
            "transformer.resblocks.0.mlp.c_fc.weight"} <= frozen
    assert not any(n.startswith(("visual.transformer.resblocks.1.", "transformer.resblocks.1.")) for n in frozen)
    assert {"visual.proj", "text_projection", "logit_scale", "visual.ln_post.weight"}.isdisjoint(frozen)
    assert find_split(bundle.model, 1) is None  # a ViT is not split; its frozen blocks still run in the forward


def test_ft_trains_image_tower_and_head_only(tmp_path):
    bundle = arf.models.create_model("arf:tiny-clip")
    ds = arf.data.get_suite("offline", make_benchmark(tmp_path / "b", per_class=2)).get("train")
    m = FineTune(TrainConfig(method="ft"), bundle, ds)
    m.set_trainable(m.phases(1)[0])
    trained = {n for n, p in m.module.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias", "model.visual.proj"} <= trained
    assert all(n.startswith(("model.visual.", "head.")) for n in trained)


def test_split_tower_equals_full_tower(effnet_bundle):
    model = effnet_bundle.model.eval()
    split = find_split(model, 3)
    assert split is not None and find_split(model, 0) is None and find_split(model, 7) is None
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(split.suffix(split.prefix(x)), model.encode_image(x), rtol=1e-5, atol=1e-6)


def test_cached_activations_give_the_same_step(tmp_path, effnet_bundle):
    """Full tower, split tower on pixels, split tower on cached activations: same loss and gradients."""
    from arf.images import BadInputCounter
    from arf.train.data import StepDataset, StepSampler, collate

    ds = arf.data.get_suite("offline", make_benchmark(tmp_path / "b", per_class=2)).get("train")
    state = {k: v.clone() for k, v in effnet_bundle.model.state_dict().items()}
    results = []
    for mode in ("full", "pixels", "cached"):
        effnet_bundle.model.load_state_dict(state)
        cfg = TrainConfig(method="flyp", batch_size=4, freeze_image_blocks=4, cache_features=mode == "cached",
                          prefix_store=None)
        m = Flyp(cfg, effnet_bundle, ds)
        if mode == "full":
            m.split = None
        phase = m.phases(2)[0]
        m.set_trainable(phase)
        m.module.train()
        m.freeze_norm_stats()
        m.prepare(phase, torch.device("cpu"), None)
        assert (m.acts is not None) == (mode == "cached")
        sampler = StepSampler(cfg, len(ds), 0, 0, 1, 0, 2, lambda s, m=m, p=phase: m.needs(p))
        data = StepDataset(ds, effnet_bundle.preprocess_val, False, None, BadInputCounter("t"))
        batch = collate([data[k] for k in sampler.keys(0, 0)])
        assert ("images" in batch) == (mode != "cached")
        m.module.zero_grad(set_to_none=True)
        loss = m.losses(m.module, batch, 0, phase)["loss"]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m.module.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads))
    (l0, g0) = results[0]
    assert not any(n.startswith("model.visual.trunk.blocks.0.") for n in g0)
    for loss, grads in results[1:]:
        assert loss == pytest.approx(l0, rel=1e-5)
        assert grads.keys() == g0.keys()
        for n in g0:
            torch.testing.assert_close(grads[n], g0[n], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("freeze_bn_stats", [False, True])
def test_freeze_bn_stats_keeps_every_running_statistic_while_bn_weights_train(tmp_path, effnet_bundle,
                                                                               freeze_bn_stats):
    from arf.images import BadInputCounter
    from arf.train.data import StepDataset, StepSampler, collate

    ds = arf.data.get_suite("offline", make_benchmark(tmp_path / "b", per_class=2)).get("train")
    state = {k: v.clone() for k, v in effnet_bundle.model.state_dict().items()}
    cfg = TrainConfig(method="flyp", batch_size=4, freeze_image_blocks=4, cache_features=False,
                      freeze_bn_stats=freeze_bn_stats)
    m = Flyp(cfg, effnet_bundle, ds)
    phase = m.phases(2)[0]
    m.set_trainable(phase)
    m.module.train()
    m.freeze_norm_stats()
    sampler = StepSampler(cfg, len(ds), 0, 0, 1, 0, 2, lambda s: m.needs(phase))
    data = StepDataset(ds, effnet_bundle.preprocess_val, False, None, BadInputCounter("t"))
    loss = m.losses(m.module, collate([data[k] for k in sampler.keys(0, 0)]), 0, phase)["loss"]
    loss.backward()
    after = effnet_bundle.model.state_dict()
    trained_bn = "visual.trunk.bn2.running_mean"  # after conv_head: trained, not frozen
    assert effnet_bundle.model.visual.trunk.bn2.weight.grad is not None  # its affine parameters do train
    assert torch.equal(after[trained_bn], state[trained_bn]) == freeze_bn_stats
    assert torch.equal(after["visual.trunk.bn1.running_mean"], state["visual.trunk.bn1.running_mean"])  # frozen stem
    effnet_bundle.model.load_state_dict(state)


def test_encode_prefix_declines_over_budget(tmp_path, effnet_bundle):
    ds = arf.data.get_suite("offline", make_benchmark(tmp_path / "b", per_class=2)).get("train")
    split = find_split(effnet_bundle.model, 2)
    acts = encode_prefix(split, ds, effnet_bundle.preprocess_val, torch.device("cpu"))
    assert acts is not None and acts.shape[0] == len(ds) and torch.isfinite(acts).all()
    assert encode_prefix(split, ds, effnet_bundle.preprocess_val, torch.device("cpu"), max_bytes=10) is None


def test_trim_padding():
    t = torch.tensor([[101, 5, 102, 0, 0], [101, 102, 0, 0, 0]])
    assert trim_padding(t, 0).tolist() == [[101, 5, 102], [101, 102, 0]]
    assert trim_padding(t, None) is t


def _arf_step(bundle, ds, anchors, mode: str, state: dict) -> tuple[float, dict, dict]:
    """One ARF step (λ_ret only) with anchor pixels ("pixels") or cached anchor activations ("cached")."""
    from arf.images import BadInputCounter
    from arf.train.data import StepDataset, StepSampler, collate
    from arf.train.methods import Arf

    bundle.model.load_state_dict(state)
    cfg = TrainConfig(method="arf", batch_size=4, anchor_batch_size=4, freeze_image_blocks=4, lambda_cap=0.0,
                      lambda_ret=1.0, cache_features=mode == "cached", prefix_store=None)
    m = Arf(cfg, bundle, ds, None, anchors)
    phase = m.phases(2)[0]
    m.set_trainable(phase)
    m.module.train()
    m.freeze_norm_stats()
    m.prepare(phase, torch.device("cpu"), None)
    sampler = StepSampler(cfg, len(ds), len(anchors), 0, 1, 0, 2, lambda s: m.needs(phase))
    data = StepDataset(ds, bundle.preprocess_val, False, anchors, BadInputCounter("t"))
    batch = collate([data[k] for k in sampler.keys(0, 0)])
    m.module.zero_grad(set_to_none=True)
    losses = m.losses(m.module, batch, 0, phase)
    losses["loss"].backward()
    grads = {n: p.grad.clone() for n, p in m.module.named_parameters() if p.grad is not None}
    return losses["anchor_loss"].item(), grads, batch


def test_cached_anchor_activations_give_the_same_step(tmp_path, effnet_bundle):
    """Retrieved anchors through the cached frozen prefix: same anchor loss and gradients, no anchor decoded."""
    from arf.train.data import read_anchors
    from train_fixtures import make_anchors

    root = make_benchmark(tmp_path / "b", per_class=2)
    ds = arf.data.get_suite("offline", root).get("train")
    anchors = read_anchors(make_anchors(root), root)
    state = {k: v.clone() for k, v in effnet_bundle.model.state_dict().items()}
    l_pix, g_pix, b_pix = _arf_step(effnet_bundle, ds, anchors, "pixels", state)
    l_acts, g_acts, b_acts = _arf_step(effnet_bundle, ds, anchors, "cached", state)
    assert "anchor_images" in b_pix and "anchor_images" not in b_acts and "images" not in b_acts
    assert b_pix["anchor_indices"].tolist() == b_acts["anchor_indices"].tolist()
    assert l_acts == pytest.approx(l_pix, rel=1e-5)
    assert g_acts.keys() == g_pix.keys()
    for n in g_pix:
        torch.testing.assert_close(g_acts[n], g_pix[n], rtol=1e-3, atol=1e-5)


def test_unreadable_cached_anchor_is_dropped_from_the_batch(tmp_path, effnet_bundle):
    from arf.train.data import read_anchors
    from train_fixtures import make_anchors

    root = make_benchmark(tmp_path / "b", per_class=2, n_pool=40)  # 1 bad of 40 is under max_bad_fraction 5 %
    ds = arf.data.get_suite("offline", root).get("train")
    anchors = read_anchors(make_anchors(root), root)
    state = {k: v.clone() for k, v in effnet_bundle.model.state_dict().items()}
    _, _, full = _arf_step(effnet_bundle, ds, anchors, "cached", state)
    bad = int(full["anchor_indices"][0])
    with open(anchors.paths[bad], "wb") as f:
        f.write(b"not an image")
    loss, _, batch = _arf_step(effnet_bundle, ds, anchors, "cached", state)
    assert batch["anchor_indices"].tolist() == [i for i in full["anchor_indices"].tolist() if i != bad]
    assert loss == loss  # finite, not NaN: the unreadable anchor's NaN activations never reach the loss
