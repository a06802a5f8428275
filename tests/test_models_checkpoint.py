"""Checkpoints: safetensors + open_clip config round trip through ARF and through plain open_clip."""

from __future__ import annotations

import json
import pickle

import open_clip
import pytest
import torch
from PIL import Image

from arf.errors import ArfError, InputFileError
from arf.models import create_model, load_checkpoint, save_checkpoint
from arf.models.checkpoint import check_loadable, skip_init_on_load
from arf.models.openclip import build_open_clip_model


def _finetune_a_little(bundle) -> None:
    # A real change to every weight, so a reload that silently kept the init would be caught.
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.add_(0.01 * torch.randn_like(p))


def _outputs(model, tokenizer, preprocess):
    img = Image.new("RGB", (40, 36), (30, 200, 90))
    model.eval()
    with torch.no_grad():
        return (model.encode_image(preprocess(img)[None]), model.encode_text(tokenizer(["a dog", "a red cat"])),
                model.logit_scale.detach().clone())


def test_roundtrip_through_arf_and_plain_open_clip(tmp_path) -> None:
    torch.manual_seed(0)
    b = create_model("arf:tiny-clip")
    _finetune_a_little(b)
    out = save_checkpoint(b, tmp_path / "ck", extra={"method": "flyp"})
    assert {p.name for p in out.iterdir()} == {"open_clip_model.safetensors", "open_clip_config.json", "arf.json"}
    meta = json.loads((out / "arf.json").read_text())
    assert meta["model_id"] == "arf:tiny-clip" and meta["method"] == "flyp"
    # provenance: what made these weights (numbers differ between CPU models and library versions)
    assert torch.__version__.startswith(meta["env"]["packages"]["torch"])
    assert meta["env"]["packages"]["open_clip_torch"] == open_clip.__version__
    assert meta["env"]["cpu"] and meta["env"]["python"].count(".") == 2

    ref = _outputs(b.model, b.tokenizer, b.preprocess_val)

    again = create_model(str(out))
    for x, y in zip(ref, _outputs(again.model, again.tokenizer, again.preprocess_val), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)

    # plain open_clip, local-dir form
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tok = open_clip.get_tokenizer(f"local-dir:{out}")
    for x, y in zip(ref, _outputs(model, tok, preprocess), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)

    # plain open_clip, (name, pretrained=<file>) form: register the model_cfg under a name, as users do
    named = tmp_path / "cfgs" / "arf-tiny-clip-test.json"
    named.parent.mkdir()
    named.write_text(json.dumps(json.loads((out / "open_clip_config.json").read_text())["model_cfg"]))
    open_clip.add_model_config(named)
    model2, _, _ = open_clip.create_model_and_transforms(
        "arf-tiny-clip-test", pretrained=str(out / "open_clip_model.safetensors"))
    for x, y in zip(ref, _outputs(model2, tok, preprocess), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_load_from_weights_file(tmp_path) -> None:
    b = create_model("arf:tiny-clip")
    out = save_checkpoint(b, tmp_path / "ck")
    again = load_checkpoint(out / "open_clip_model.safetensors")
    torch.testing.assert_close(again.model.visual.conv1.weight, b.model.visual.conv1.weight)


def test_wrong_architecture_names_first_bad_key(tmp_path) -> None:
    b = create_model("arf:tiny-clip")
    out = save_checkpoint(b, tmp_path / "ck")
    cfg = json.loads((out / "open_clip_config.json").read_text())
    cfg["model_cfg"]["embed_dim"] = 48  # the projections no longer fit the saved weights
    arf_meta = json.loads((out / "arf.json").read_text())
    arf_meta["info"]["model_cfg"]["embed_dim"] = 48
    (out / "arf.json").write_text(json.dumps(arf_meta))
    with pytest.raises(InputFileError, match=r"does not fit architecture .*key '\w[\w.]*' has shape"):
        create_model(str(out))


def test_missing_weights_file(tmp_path) -> None:
    out = save_checkpoint(create_model("arf:tiny-clip"), tmp_path / "ck")
    (out / "open_clip_model.safetensors").unlink()
    with pytest.raises(InputFileError, match="has no weights file"):
        create_model(str(out))


# The crafted files use pickle protocols 4/5 on purpose; torch warns before refusing them.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_torch_file_loads_weights_only_and_refuses_code(tmp_path) -> None:
    b = create_model("arf:tiny-clip")
    out = save_checkpoint(b, tmp_path / "ck")
    (out / "open_clip_model.safetensors").unlink()
    torch.save(b.model.state_dict(), out / "open_clip_pytorch_model.bin")
    again = create_model(str(out))
    torch.testing.assert_close(again.model.visual.conv1.weight, b.model.visual.conv1.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    (out / "open_clip_pytorch_model.bin").unlink()
    evil.rename(out / "open_clip_pytorch_model.bin")
    with pytest.raises(ArfError, match=r"refusing to load .*would run code"):
        create_model(str(out))


def test_not_a_checkpoint_folder(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="not a checkpoint folder"):
        create_model(str(tmp_path / "empty"))


def test_training_run_folder_points_to_its_model(tmp_path) -> None:
    run = tmp_path / "ft-s0"
    (run / "checkpoints" / "step_00000010").mkdir(parents=True)
    with pytest.raises(InputFileError, match=r"unfinished training run .*--resume latest"):
        create_model(str(run))
    save_checkpoint(create_model("arf:tiny-clip"), run / "final")
    with pytest.raises(InputFileError, match=r"it is a training run, whose model is .*ft-s0/final"):
        create_model(str(run))
    with pytest.raises(InputFileError, match=r"whose model is .*ft-s0/final"):
        check_loadable(run)


def test_bare_weights_file_names_the_file_and_the_openclip_route(tmp_path) -> None:
    b = create_model("arf:tiny-clip")
    lone = tmp_path / "epoch_3.pt"
    torch.save(b.model.state_dict(), lone)
    with pytest.raises(InputFileError, match=r"epoch_3\.pt: a weights file loads only with .* openclip:<name>@"):
        create_model(str(lone))


def _all_tensors(model) -> dict[str, torch.Tensor]:
    # Parameters and every buffer, the non-persistent ones (not in the state dict, never loaded) included.
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def test_skip_init_on_load_gives_the_same_model_without_the_init_draws(tmp_path) -> None:
    b = create_model("arf:tiny-clip")
    _finetune_a_little(b)
    out = save_checkpoint(b, tmp_path / "ck")

    torch.manual_seed(0)
    plain = create_model(str(out))
    after_plain = torch.rand(4)
    torch.manual_seed(0)
    with skip_init_on_load():
        fast = create_model(str(out))
        # A model meant to be random is no checkpoint load: it keeps its initialisation inside the block too.
        tiny = create_model("arf:tiny-clip")
    after_fast = torch.rand(4)

    want, got = _all_tensors(plain.model), _all_tensors(fast.model)
    assert want.keys() == got.keys()
    assert not [k for k in want if not torch.equal(want[k], got[k])]
    for x, y in zip(_outputs(plain.model, plain.tokenizer, plain.preprocess_val),
                    _outputs(fast.model, fast.tokenizer, fast.preprocess_val), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    ref = _all_tensors(create_model("arf:tiny-clip").model)
    assert all(torch.equal(ref[k], v) for k, v in _all_tensors(tiny.model).items())
    # The skipped initialisation no longer advances the global RNG stream ...
    assert not torch.equal(after_plain, after_fast)
    # ... which is why a plain load (what training does after seeding) keeps drawing exactly as building does.
    torch.manual_seed(0)
    build_open_clip_model(json.loads((out / "open_clip_config.json").read_text())["model_cfg"])
    torch.testing.assert_close(torch.rand(4), after_plain, rtol=0, atol=0)
