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
