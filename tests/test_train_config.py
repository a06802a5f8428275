"""Bad training configs fail early with one ConfigError naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arf.config import load_config
from arf.errors import ConfigError
from arf.train import METHOD_NAMES, METHODS, TrainConfig
from train_fixtures import make_anchors, make_benchmark, make_captions


def test_method_names_match_registry():
    assert sorted(METHOD_NAMES) == METHODS.names()


@pytest.mark.parametrize("overrides,match", [
    (["method=sgd"], r"method: unknown method 'sgd'; choose from zeroshot, lp, ft, lpft, flyp, arf, arf-ft, arf-lpft"),
    (["method=arf", "lambda_cap=-1"], r"lambda_cap: must be >= 0, got -1"),
    (["lr=-0.1"], r"lr: must be >= 0"),
    (["method=arf", "lambda_ret=1", "anchors=/nonexistent/anchors"], r"anchors: file not found: .*`arf retrieve`"),
    (["method=arf", "lambda_cap=1"], r"captions: not set; lambda_cap > 0 needs a captions parquet"),
    (["method=flyp", "lambda_cap=1"],
     r"lambda_cap/lambda_ret: anchor losses are only used by methods arf, arf-ft, arf-lpft, not flyp"),
    (["method=arf-lpft"], r"method arf-lpft needs lambda_cap > 0 or lambda_ret > 0 \(with both 0 it is lpft"),
    (["method=arf"], r"method arf needs lambda_cap > 0 or lambda_ret > 0 \(with both 0 it is flyp"),
    (["method=arf-ft"], r"method arf-ft needs lambda_cap > 0 or lambda_ret > 0 \(with both 0 it is ft"),
    (["batch_size=10", "accum_steps=3"], r"batch_size: 10 is not divisible by accum_steps=3"),
    (["precision=fp16"], r"precision: 'fp16' is not allowed; choose from auto, fp32, bf16"),
    (["device=tpu"], r"device: 'tpu' is not allowed"),
    (["batch_size=big"], r"batch_size: expected an integer"),
])
def test_bad_config_one_clear_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, None, overrides)


def test_yaml_configs_in_repo_load():
    root = Path(__file__).parents[1] / "configs"
    found = sorted([*root.glob("offline/*.yaml"), *root.glob("paper/*.yaml")])
    # Every method has an offline config; extra offline configs are variants of a method (arf-both, arf-cap).
    assert {p.stem for p in (root / "offline").glob("*.yaml")} >= set(METHOD_NAMES)
    assert {p.stem for p in (root / "paper").glob("*.yaml")} == set(METHOD_NAMES)
    for p in found:
        # arf configs name anchor files made by earlier stages; only their fields are checked here.
        cfg = load_config(TrainConfig, p, ["lambda_cap=0", "lambda_ret=0", "method=flyp"]
                          if "arf" in p.stem else [])
        assert cfg.method in METHOD_NAMES


def _data_checks(tmp_path, **overrides):
    """Runs train() up to the data checks (they come before any forward pass)."""
    from arf.train import train

    root = make_benchmark(tmp_path / "bench", per_class=2)
    make_captions(root)
    fields = {"model": "arf:tiny-clip", "data_root": str(root), "out_dir": str(tmp_path / "runs"),
              "batch_size": 4, "max_steps": 1, "progress": False, "tensorboard": False, **overrides}
    return train(TrainConfig(**fields))


def test_batch_larger_than_dataset(tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size: 64 is larger than the finetuning set 'train' \(8 images\)"):
        _data_checks(tmp_path, batch_size=64)


@pytest.mark.parametrize("field,value,match", [
    ("finetune_set", "imagenet", r"anchors: .* retrieved for the set 'imagenet', not the finetuning set 'train'"),
    ("model", "openclip:ViT-B-16@openai", r"anchors: .* retrieved with model 'openclip:ViT-B-16@openai', "
                                          r"not 'arf:tiny-clip'"),
])
def test_anchor_sidecar_for_another_set_or_model(tmp_path, field, value, match):
    root = make_benchmark(tmp_path / "bench", per_class=2)
    d = make_anchors(root)
    meta = json.loads((d / "anchors.json").read_text())
    meta[field] = value
    (d / "anchors.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=match):
        _data_checks(tmp_path, method="arf", lambda_ret=1.0, anchors=str(d), anchor_batch_size=4)


def test_anchor_batch_larger_than_anchor_set(tmp_path):
    root = make_benchmark(tmp_path / "bench", per_class=2, n_pool=4)
    d = make_anchors(root)
    with pytest.raises(ConfigError, match=r"anchor_batch_size: 8 is larger than the anchor set \(4 anchors\)"):
        _data_checks(tmp_path, method="arf", lambda_ret=1.0, anchors=str(d), anchor_batch_size=8)


def test_existing_run_needs_resume(tmp_path):
    _data_checks(tmp_path, method="lp", checkpoint_every=1)
    with pytest.raises(ConfigError, match=r"name: the run folder .* already holds checkpoints; pass --resume"):
        _data_checks(tmp_path, method="lp")
