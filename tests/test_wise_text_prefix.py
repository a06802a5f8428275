"""WiSE-FT sweeps run the text tower's shared leading layers once per prompt batch: same heads and records, the
weights' fingerprints untouched, a changed prefix or a mismatch switches the cache off."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

import arf.evaluate.text_prefix as text_prefix
from arf.evaluate.text_prefix import TextPrefixCache
from arf.evaluate.wise import interpolate
from arf.evaluate.zeroshot import HeadCache, weights_fingerprint
from arf.models import create_model
from train_fixtures import hf_text_bundle

CLASSES = ["red", "green", "blue", "yellow", "a rather long class name with many words"]
TEMPLATES = ["a photo of a {}.", "{}", "a drawing of the {} on a wall."]


@pytest.fixture()
def models(tmp_path):
    """θ0 (an HF-text CLIP) and θ1: text layer 1, the projection and the image tower moved, embeddings and layer 0
    as θ0's (what freeze_text_blocks: 1 leaves)."""
    b0 = hf_text_bundle(tmp_path / "hf")
    b1 = copy.deepcopy(b0)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in [*b1.model.text.transformer.encoder.layer[1].parameters(), *b1.model.text.proj.parameters(),
                  *b1.model.visual.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    return b0, b1


def heads(bundle, theta0, theta1, alphas):
    """The zero-shot head at each α (a fresh head cache, so every α computes its head)."""
    out = []
    for a in alphas:
        bundle.model.load_state_dict(interpolate(theta0, theta1, a))
        out.append(HeadCache().get_or_build(bundle, CLASSES, TEMPLATES))
    return out


def test_heads_along_a_sweep_are_the_same_with_the_cache(models):
    b0, b1 = models
    theta0 = {k: v.clone() for k, v in b0.model.state_dict().items()}
    theta1 = b1.model.state_dict()
    alphas = [0.3, 0.6, 1.0]
    plain = heads(b0, theta0, theta1, alphas)
    b0.model.load_state_dict(theta0)
    cache = TextPrefixCache.for_models(b0.model, b1.model)
    assert cache is not None and cache.k == 1
    fingerprint = weights_fingerprint(b0.model)
    with cache.active():
        assert weights_fingerprint(b0.model) == fingerprint  # the records' keys do not see the wrapping
        cached = []
        for a in alphas:
            b0.model.load_state_dict(interpolate(theta0, theta1, a))
            cache.check()
            cached.append(HeadCache().get_or_build(b0, CLASSES, TEMPLATES))
            if a == alphas[0]:
                n_states = len(cache.states)
        assert n_states > 0 and len(cache.states) == n_states  # later α add no batch: all served from the cache
    assert cache.verified and cache.enabled
    for p, c in zip(plain, cached, strict=True):
        assert torch.equal(p, c)
    assert not torch.equal(plain[0], plain[-1])  # the α differ: a test of equal heads, not of a constant
    text = b0.model.text
    for m in (text, text.transformer.embeddings, text.transformer.encoder.layer[0]):
        assert "forward" not in m.__dict__  # the class's forward again


def test_cached_batches_skip_the_shared_layers(models, monkeypatch):
    b0, b1 = models
    cache = TextPrefixCache.for_models(b0.model, b1.model)
    calls: list[str] = []
    layer_cls = type(b0.model.text.transformer.encoder.layer[0])
    orig = layer_cls.forward

    def counting(self, *a, **kw):
        calls.append("layer0" if self is b0.model.text.transformer.encoder.layer[0] else "other")
        return orig(self, *a, **kw)

    monkeypatch.setattr(layer_cls, "forward", counting)
    tokens = b0.tokenizer(["a photo of a cat.", "a red thing"])
    with cache.active(), torch.no_grad():
        first = b0.model.encode_text(tokens)
        n_first = calls.count("layer0")
        calls.clear()
        cache.verified = True  # past the one-time check: a cached batch now runs only the later layers
        again = b0.model.encode_text(tokens)
    assert n_first == 1 and calls == ["other"]
    assert torch.equal(first, again)


def test_a_changed_prefix_or_a_mismatch_switches_the_cache_off(models, caplog, monkeypatch):
    b0, b1 = models
    cache = TextPrefixCache.for_models(b0.model, b1.model)
    tokens = b0.tokenizer(["a photo of a cat."])
    with cache.active(), torch.no_grad():
        b0.model.encode_text(tokens)
        assert cache.states
        with torch.no_grad():
            b0.model.text.transformer.encoder.layer[0].output.dense.weight.add_(0.01)
        cache.check()  # as after loading an α: compared when the cache would serve next
        assert cache.enabled
        with caplog.at_level(logging.WARNING):
            out = b0.model.encode_text(tokens)
        assert not cache.enabled and not cache.states and "switched off" in caplog.text
    with torch.no_grad():
        assert torch.equal(out, b0.model.encode_text(tokens))  # computed in full, the changed layer included
    cache = TextPrefixCache.for_models(b0.model, b0.model)
    with cache.active(), torch.no_grad():
        b0.model.encode_text(tokens)
        key = next(iter(cache.states))
        cache.states[key] = cache.states[key] + 1.0  # as if the cached states were wrong
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            out = b0.model.encode_text(tokens)
    assert "differs from the full tower" in caplog.text and not cache.enabled
    assert torch.equal(out, b0.model.encode_text(tokens))


def test_only_hf_towers_with_shared_embeddings_get_a_cache(models):
    b0, b1 = models
    with torch.no_grad():
        b1.model.text.transformer.embeddings.word_embeddings.weight.add_(0.1)
    assert TextPrefixCache.for_models(b0.model, b1.model) is None
    tiny = create_model("arf:tiny-clip")  # open_clip's own text transformer
    assert TextPrefixCache.for_models(tiny.model, tiny.model) is None
    assert text_prefix._encoder_parts(tiny.model) is None


def test_a_sweep_gives_the_same_records_with_and_without_the_cache(models, tmp_path, monkeypatch):
    from arf.evaluate import EvalOptions, wise_sweep
    from arf.models import save_checkpoint
    from evaluate_fixtures import make_set

    b0, b1 = models
    save_checkpoint(b0, tmp_path / "zs")
    save_checkpoint(b1, tmp_path / "ft", extra={"method": "flyp"})
    sets = [make_set(tmp_path / "a", "set_a", "id", [0, 1, 2]), make_set(tmp_path / "z", "set_z", "zeroshot", [3, 4])]
    opts = EvalOptions(batch_size=4, progress=False)
    made: list[TextPrefixCache | None] = []
    orig = TextPrefixCache.for_models

    def recording(*a, **kw):
        made.append(orig(*a, **kw))
        return made[-1]

    monkeypatch.setattr(TextPrefixCache, "for_models", recording)
    cached = wise_sweep(str(tmp_path / "zs"), str(tmp_path / "ft"), [0.0, 0.5, 1.0], sets=sets, opts=opts)
    monkeypatch.setattr(TextPrefixCache, "for_models", lambda *a, **kw: None)
    plain = wise_sweep(str(tmp_path / "zs"), str(tmp_path / "ft"), [0.0, 0.5, 1.0], sets=sets, opts=opts)
    assert made and made[0] is not None and made[0].verified and made[0].enabled

    def key(records):
        return sorted((r.set, r.metric, r.alpha, r.value, r.n, r.config_hash) for r in records)

    assert key(cached) == key(plain) and len(cached) == 6
