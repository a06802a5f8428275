"""``arf train`` end to end, in-process, for every registered method on a tiny benchmark."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from arf.cli import main
from arf.train import METHODS
from train_fixtures import NAMES, make_anchors, make_benchmark, make_captions


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = make_benchmark(tmp_path_factory.mktemp("train_cli") / "bench", per_class=4)
    make_captions(root, missing=1)
    make_anchors(root)
    return root


@pytest.mark.parametrize("method", METHODS.names())
def test_arf_train_every_method(bench, tmp_path, method):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": "arf:tiny-clip", "data_root": str(bench), "batch_size": 8,
                                   "max_steps": 2, "lr": 1e-4, "lp_epochs": 0.5, "progress": False}))
    extra = []
    if method in ("arf", "arf-ft", "arf-lpft"):
        extra = ["--set", f"captions={bench / 'captions.parquet'}", "--set", f"anchors={bench / 'anchors'}",
                 "--set", "lambda_cap=1", "--set", "lambda_ret=0.5", "--set", "anchor_batch_size=4"]
    rc = main(["train", "--config", str(cfg), "--method", method, "--out-dir", str(tmp_path / "runs"), *extra])
    assert rc == 0
    run = tmp_path / "runs" / method
    final = run / "final"
    assert (final / "open_clip_model.safetensors").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == method and saved["batch_size"] == 8
    meta = json.loads((final / "arf.json").read_text())
    assert meta["train"]["method"] == method
    if method in ("lp", "ft", "lpft", "arf-ft", "arf-lpft"):
        head = load_file(str(final / "head.safetensors"))
        assert head["weight"].shape[0] == len(NAMES) and head["bias"].shape == (len(NAMES),)
        assert meta["head"]["classnames"] == NAMES
    else:
        assert not (final / "head.safetensors").exists()
    if method == "zeroshot":
        assert not (run / "metrics.jsonl").exists()
        return
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    anchored = {"ce_loss", "caption_loss", "anchor_loss"}
    keys = {"arf": {"clip_loss", "caption_loss", "anchor_loss"}, "arf-ft": anchored, "arf-lpft": anchored,
            "flyp": {"clip_loss"}}.get(method, {"ce_loss"})
    # Two-phase methods log their probe step first; the last step is the fine-tuning phase's.
    assert keys | {"loss", "lr", "img_per_s", "grad_norm"} <= set(lines[-1])
    if method == "arf-lpft":
        assert lines[0]["phase"] == "lp" and "anchor_loss" not in lines[0]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)
    if method in ("arf", "arf-ft", "arf-lpft"):
        r = lines[-1]
        first = r["clip_loss"] if method == "arf" else r["ce_loss"]
        assert r["loss"] == pytest.approx(first + r["caption_loss"] + 0.5 * r["anchor_loss"], rel=1e-4)
    # Every method but lp moves the encoder; lp keeps it and trains only its head.
    import arf.models

    base = arf.models.create_model("arf:tiny-clip").model.state_dict()
    trained = load_file(str(final / "open_clip_model.safetensors"))
    changed = any(not torch.equal(trained[k], base[k]) for k in trained if k in base)
    assert changed == (method != "lp")
    # The head methods keep the text tower (the zero-shot classifier) and its scale exactly the base's: arf-ft's
    # anchor losses pull the image tower towards it, never the other way.
    text_same = all(torch.equal(trained[k], base[k]) for k in trained if not k.startswith("visual."))
    assert text_same == (method in ("lp", "ft", "lpft", "arf-ft", "arf-lpft", "zeroshot"))

def test_arf_train_bad_config_exits_2(tmp_path, capsys):
    rc = main(["train", "--method", "arf", "--set", "lambda_cap=-1", "--out-dir", str(tmp_path)])
    assert rc == 2
    assert "lambda_cap: must be >= 0" in capsys.readouterr().err


def test_train_help_lists_every_registered_method(capsys, monkeypatch):
    # The help is built from arf.method_names.METHOD_NAMES (torch-free); a method registered without a name there
    # would be trainable but missing from `arf train --help` and rejected by the config's validation.
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at hyphens: "arf-" / "lpft" on a narrow terminal
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in METHODS.names():
        assert name in text, name
    assert " | ".join(("zeroshot", "lp", "ft")) in text
