"""grad_checkpointing: the trained blocks run their forward again in the backward pass (so their activations were
not kept), and the gradients are the ones without it — on open_clip's ViT + text transformer, the split timm trunk
of the frozen-prefix path and an HF text tower with frozen embeddings; the run hash ignores the flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from arf.config import load_config
from arf.errors import ConfigError
from arf.models import create_model
from arf.models.trunk import find_split
from arf.train.config import TrainConfig
from arf.train.grad_checkpointing import enable_grad_checkpointing
from arf.train.run_hash import train_hash
from train_fixtures import effnet_bundle, hf_text_bundle


def _count_forwards(modules: list[nn.Module]) -> list[int]:
    counts = [0] * len(modules)
    for i, m in enumerate(modules):
        # A pre-hook: the recomputation stops as soon as it has what the backward needs, before forward hooks.
        m.register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def _loss(bundle, images: torch.Tensor, encode_image=None) -> torch.Tensor:
    img = (encode_image or bundle.model.encode_image)(images)
    txt = bundle.model.encode_text(bundle.tokenizer(["a red square", "a blue circle", "a dog"]))
    return (img @ txt.T).logsumexp(1).sum() + img.square().mean()


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _same_step(make, blocks_of, encode_of=None, freeze=lambda m: None) -> list[int]:
    """Gradients with and without checkpointing; returns the blocks' forward counts of the checkpointed step."""
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = []
    for on in (False, True):
        bundle = make()
        freeze(bundle.model)
        bundle.model.train()
        if on:
            enable_grad_checkpointing(bundle.model, "test", freeze_bn_stats=True)
        counts = _count_forwards(blocks_of(bundle.model))
        _loss(bundle, images, encode_of(bundle.model) if encode_of else None).backward()
        out.append((_grads(bundle.model), counts))
    (g0, c0), (g1, c1) = out
    assert g0.keys() == g1.keys() and g0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-6, msg=k)
    assert all(n == 1 for n in c0)
    return c1


def test_open_clip_vit_and_text_transformer_recompute_with_the_same_gradients() -> None:
    counts = _same_step(lambda: create_model("arf:tiny-clip"),
                        lambda m: [*m.visual.transformer.resblocks, *m.transformer.resblocks])
    assert all(n == 2 for n in counts)


def test_the_split_trunk_of_the_frozen_prefix_path_recomputes_its_trained_blocks() -> None:
    def encode(model):
        split = find_split(model, 2)
        assert split is not None
        return lambda x: nn.functional.normalize(split.suffix(split.prefix(x).detach()), dim=-1)

    counts = _same_step(lambda: effnet_bundle(0), lambda m: list(m.visual.trunk.blocks), encode,
                        freeze=lambda m: m.visual.trunk.blocks[:2].requires_grad_(False))
    assert counts[:2] == [1, 1] and all(n == 2 for n in counts[2:])  # the prefix runs once, under no autograd


def test_hf_text_tower_with_frozen_embeddings_keeps_its_gradients(tmp_path: Path) -> None:
    # Reentrant checkpointing would give the layers no gradient when their input (frozen embeddings) needs none.
    # transformers checkpoints a layer's forward, not its __call__ (its hooks run once): count a sub-module instead.
    counts = _same_step(lambda: hf_text_bundle(tmp_path / "tok"),
                        lambda m: [layer.attention for layer in m.text.transformer.encoder.layer],
                        freeze=lambda m: m.text.transformer.embeddings.requires_grad_(False))
    assert all(n == 2 for n in counts)


def test_models_without_it_are_refused_and_the_run_hash_ignores_it() -> None:
    with pytest.raises(ConfigError, match=r"grad_checkpointing: model m \(Linear\) cannot recompute"):
        enable_grad_checkpointing(nn.Linear(2, 2), "m", freeze_bn_stats=True)
    on = load_config(TrainConfig, None, ["grad_checkpointing=true", "model=arf:tiny-clip"])
    off = load_config(TrainConfig, None, ["model=arf:tiny-clip"])
    assert on.grad_checkpointing and train_hash(on) == train_hash(off)


def test_arf_train_with_it_ends_at_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    import arf.train.grad_checkpointing as gc
    from arf.cli import main
    from train_fixtures import make_benchmark

    bench = make_benchmark(tmp_path / "bench", per_class=4)
    finals = []
    enabled: list[str] = []

    def spy(model: nn.Module, model_id: str, freeze_bn_stats: bool) -> None:
        enabled.append(model_id)
        enable_grad_checkpointing(model, model_id, freeze_bn_stats)

    monkeypatch.setattr(gc, "enable_grad_checkpointing", spy)
    for on in ("false", "true"):
        out = tmp_path / f"runs-{on}"
        assert main(["train", "--method", "flyp", "--out-dir", str(out), "--set", "model=arf:tiny-clip",
                     "--set", f"data_root={bench}", "--set", "batch_size=8", "--set", "max_steps=3",
                     "--set", "lr=1e-3", "--set", "progress=false", "--set", f"grad_checkpointing={on}"]) == 0
        finals.append(load_file(out / "flyp" / "final" / "open_clip_model.safetensors"))
        assert enabled == (["arf:tiny-clip"] if on == "true" else [])
    assert finals[0].keys() == finals[1].keys()
    for k, v in finals[0].items():
        torch.testing.assert_close(finals[1][k], v, rtol=1e-4, atol=1e-6, msg=k)
    base = create_model("arf:tiny-clip").model.state_dict()
    changed = sum(not torch.equal(base[k], v) for k, v in finals[0].items() if k in base)
    assert changed > 0  # it trained
