"""create_model / list_models / arf:tiny-clip contract (docs/ARCHITECTURE.md, Models)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from arf.errors import ArfError, ConfigError
from arf.models import ClipBundle, create_model, list_models


def test_tiny_clip_contract() -> None:
    b = create_model("arf:tiny-clip")
    assert isinstance(b, ClipBundle)
    assert b.model_id == "arf:tiny-clip"
    tokens = b.tokenizer(["a photo of a dog", "a cat"])
    assert tokens.dtype == torch.long and tokens.shape == (2, 32)
    img = Image.new("RGB", (50, 40), (200, 10, 10))
    x_val, x_train = b.preprocess_val(img), b.preprocess_train(img)
    assert x_val.shape == x_train.shape == (3, 32, 32) and x_val.dtype == torch.float32
    b.model.eval()
    with torch.no_grad():
        fi = b.model.encode_image(x_val[None], normalize=True)
        ft = b.model.encode_text(tokens, normalize=True)
    assert fi.shape == (1, 32) and ft.shape == (2, 32)
    torch.testing.assert_close(fi.norm(dim=-1), torch.ones(1))
    assert isinstance(b.model.logit_scale, torch.nn.Parameter)
    assert b.info["family"] == "open_clip" and "model_cfg" in b.info and "preprocess_cfg" in b.info


def test_tiny_clip_is_deterministic_and_keeps_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = create_model("arf:tiny-clip")
    after = torch.rand(3)
    b = create_model("arf:tiny-clip")
    torch.testing.assert_close(after, expected)  # building did not consume the caller's RNG
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka


def test_list_models_names_every_prefix() -> None:
    names = list_models()
    assert "arf:tiny-clip" in names and "arf:mini-clip" in names
    assert any(n.startswith("openclip:") for n in names) and any(n.startswith("hf:") for n in names)


@pytest.mark.parametrize("bad", ["nope", "foo:bar", "arf:giant-clip", ""])
def test_unknown_model_lists_choices(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown model .*choose from .*arf:tiny-clip"):
        create_model(bad)


def test_unknown_openclip_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown open_clip model 'NoSuchNet'; choose from .*ViT-B-32"):
        create_model("openclip:NoSuchNet@openai")


def test_missing_checkpoint_path(tmp_path) -> None:
    missing = tmp_path / "nothing_here"
    with pytest.raises(ArfError, match="nothing_here"):
        create_model(str(missing))


def test_openclip_prefix_local_dir_and_weights_file(tmp_path) -> None:
    import json

    import open_clip

    from arf.models import save_checkpoint

    b = create_model("arf:tiny-clip")
    with torch.no_grad():
        b.model.logit_scale.fill_(3.0)  # a "finetuned" value the random init never has
    out = save_checkpoint(b, tmp_path / "ck")
    tokens = b.tokenizer(["a photo of a dog"])
    ref = b.model.eval().encode_text(tokens)

    o = create_model(f"openclip:local-dir:{out}")
    assert o.model_id == f"openclip:local-dir:{out}"
    torch.testing.assert_close(o.model.eval().encode_text(o.tokenizer(["a photo of a dog"])), ref, rtol=0, atol=0)
    assert float(o.model.logit_scale.detach()) == 3.0

    # <name>@<weights file>: a config registered with open_clip under a name, weights from the checkpoint
    named = tmp_path / "cfgs" / "arf-tiny-factory-test.json"
    named.parent.mkdir()
    named.write_text(json.dumps(json.loads((out / "open_clip_config.json").read_text())["model_cfg"]))
    open_clip.add_model_config(named)
    w = create_model(f"openclip:arf-tiny-factory-test@{out / 'open_clip_model.safetensors'}")
    torch.testing.assert_close(w.model.eval().encode_text(tokens), ref, rtol=0, atol=0)
    # saving an openclip: bundle keeps the config open_clip needs to reload it
    again = create_model(str(save_checkpoint(w, tmp_path / "ck2")))
    torch.testing.assert_close(again.model.eval().encode_text(tokens), ref, rtol=0, atol=0)


def test_openclip_bad_pretrained_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"model 'openclip:RN50@.*missing\.pt'"):
        create_model(f"openclip:RN50@{tmp_path / 'missing.pt'}")
