"""WiSE-FT: interpolate endpoints, mixing, buffers, mismatch errors; alpha parsing; sweeps over bundles."""

from __future__ import annotations

import pytest
import torch

from arf.errors import ConfigError
from arf.evaluate import EvalOptions, Head, evaluate, interpolate, interpolate_heads, parse_alphas, wise_points
from evaluate_fixtures import NAMES, OracleBundle, make_set


def states(seed0=0, seed1=1):
    g0, g1 = torch.Generator().manual_seed(seed0), torch.Generator().manual_seed(seed1)
    t0 = {"w": torch.randn(3, 4, generator=g0), "b": torch.randn(3, generator=g0),
          "half": torch.randn(2, generator=g0).half(), "n": torch.tensor(3)}
    t1 = {"w": torch.randn(3, 4, generator=g1), "b": torch.randn(3, generator=g1),
          "half": torch.randn(2, generator=g1).half(), "n": torch.tensor(7)}
    return t0, t1


def test_endpoints_reproduce_models_exactly():
    t0, t1 = states()
    out0, out1 = interpolate(t0, t1, 0.0), interpolate(t0, t1, 1)
    for k in ("w", "b", "half"):
        assert torch.equal(out0[k], t0[k]) and torch.equal(out1[k], t1[k])
        assert out0[k].dtype == t0[k].dtype
    assert out0["w"] is not t0["w"]  # copies: the inputs stay untouched
    # α = 0 is theta0 whole, integer buffers too: its fingerprint is the zero-shot model's
    assert int(out0["n"]) == 3 and int(out1["n"]) == 7


def test_midpoint_and_integer_buffers():
    t0, t1 = states()
    before = {k: v.clone() for k, v in t0.items()}
    mid = interpolate(t0, t1, 0.25)
    assert torch.allclose(mid["w"], 0.75 * t0["w"] + 0.25 * t1["w"])
    assert mid["half"].dtype == torch.float16
    assert int(mid["n"]) == 7  # non-float buffers come from theta1
    assert all(torch.equal(before[k], t0[k]) for k in t0)


def test_mismatches_name_the_key():
    t0, t1 = states()
    t1_missing = {k: v for k, v in t1.items() if k != "b"}
    with pytest.raises(ConfigError, match="'b' is only in theta0"):
        interpolate(t0, t1_missing, 0.5)
    with pytest.raises(ConfigError, match="'extra' is only in theta1"):
        interpolate(t0, {**t1, "extra": torch.zeros(1)}, 0.5)
    with pytest.raises(ConfigError, match=r"'w' has shape \(3, 4\) in theta0, \(4, 3\) in theta1"):
        interpolate(t0, {**t1, "w": torch.zeros(4, 3)}, 0.5)
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ConfigError, match="alpha"):
            interpolate(t0, t1, bad)


def test_text_alpha_interpolates_the_text_side_on_its_own():
    g = torch.Generator().manual_seed(5)
    t0 = {"visual.w": torch.randn(3, generator=g), "text.w": torch.randn(3, generator=g),
          "logit_scale": torch.randn(1, generator=g), "visual.n": torch.tensor(1), "text.n": torch.tensor(2)}
    t1 = {k: (v + 1.0 if v.is_floating_point() else v + 10) for k, v in t0.items()}
    out = interpolate(t0, t1, 0.8, text_alpha=0.0)
    assert torch.allclose(out["visual.w"], 0.2 * t0["visual.w"] + 0.8 * t1["visual.w"])
    for k in ("text.w", "logit_scale", "text.n"):      # α 0 on the text side: the zero-shot model's, buffers too
        assert torch.equal(out[k], t0[k])
    assert int(out["visual.n"]) == 11
    half = interpolate(t0, t1, 1.0, text_alpha=0.5)
    assert torch.equal(half["visual.w"], t1["visual.w"])
    assert torch.allclose(half["text.w"], (t0["text.w"] + t1["text.w"]) / 2)
    same = interpolate(t0, t1, 0.3, text_alpha=0.3)     # equal α: plain WiSE-FT
    assert all(torch.equal(same[k], v) for k, v in interpolate(t0, t1, 0.3).items())
    with pytest.raises(ConfigError, match="text_alpha"):
        interpolate(t0, t1, 0.5, text_alpha=2.0)


def test_parse_alphas():
    a = parse_alphas("0:1:0.1")
    assert len(a) == 11 and a[0] == 0.0 and a[-1] == 1.0 and a[3] == 0.3
    assert parse_alphas("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas("1,0,0.5,0.5") == [0.0, 0.5, 1.0]
    assert parse_alphas("0.3") == [0.3]
    for bad in ("0:1", "0:1:0", "1:0:0.1", "0,2", "a,b", ""):
        with pytest.raises(ConfigError, match="--alphas"):
            parse_alphas(bad)


def test_heads_interpolate():
    h0 = Head(torch.zeros(2, 3), torch.zeros(2), ["a", "b"])
    h1 = Head(torch.ones(2, 3), torch.ones(2), ["a", "b"], kind="trained")
    mid = interpolate_heads(h0, h1, 0.5)
    assert torch.allclose(mid.weight, torch.full((2, 3), 0.5)) and mid.classnames == ["a", "b"]
    with pytest.raises(ConfigError):
        interpolate_heads(h0, Head(torch.ones(2, 3), torch.ones(2), ["a", "c"]), 0.5)


def test_wise_points_endpoints_and_trained_head(tmp_path):
    b0, b1 = OracleBundle(NAMES[:4]), OracleBundle(NAMES[:4])
    with torch.no_grad():
        b1.model.proj.weight.add_(1.0)
        b1.model.steps.fill_(5)
    theta0 = {k: v.clone() for k, v in b0.model.state_dict().items()}
    theta1 = {k: v.clone() for k, v in b1.model.state_dict().items()}
    # a trained head that is always wrong (class k → k+1): alpha 1 → 0%, alpha 0 → theta0's zero-shot head → 100%
    w = torch.zeros(4, 4)
    for k in range(4):
        w[(k + 1) % 4, k] = 10.0
    head1 = Head(w, torch.zeros(4), NAMES[:4], kind="trained", templates=["a photo of a {}."])
    ds = make_set(tmp_path, "s", "id", [0, 1, 2, 3])
    acc = {}
    for p in wise_points(b0, b1, [0.0, 0.5, 1.0], head1=head1):
        sd = p.bundle.model.state_dict()
        ref = theta0 if p.alpha == 0.0 else theta1 if p.alpha == 1.0 else None
        if ref is not None:
            assert all(torch.equal(sd[k], ref[k]) for k in ref if k != "steps")
        acc[p.alpha] = evaluate(p.bundle, [ds], p.head, opts=EvalOptions(progress=False))[0].value
    assert acc[0.0] == 100.0 and acc[1.0] == 0.0


def test_tensors_the_finetuning_left_alone_stay_bit_identical_at_every_alpha():
    t0, t1 = states()
    t1["frozen"] = t0["frozen"] = torch.randn(64, generator=torch.Generator().manual_seed(3))
    for alpha in (0.1, 0.3, 0.7):
        mixed = interpolate(t0, t1, alpha)
        assert torch.equal(mixed["frozen"], t0["frozen"])
        assert mixed["frozen"].data_ptr() != t0["frozen"].data_ptr()   # a copy, inputs untouched
        assert torch.allclose(mixed["w"], (1 - alpha) * t0["w"] + alpha * t1["w"])


def test_alpha0_of_a_model_with_other_integer_buffers_is_the_zero_shot_model(tmp_path):
    from arf.evaluate import ModelTag, evaluate_to_file

    b0, b1 = OracleBundle(NAMES[:4]), OracleBundle(NAMES[:4])
    with torch.no_grad():
        b1.model.proj.weight.add_(1.0)
        b1.model.steps.fill_(5)   # finetuning moved an integer buffer (BatchNorm's num_batches_tracked)
    ds = make_set(tmp_path, "s", "id", [0, 1, 2, 3])
    out = tmp_path / "r.jsonl"
    opts = EvalOptions(progress=False)
    zs = evaluate_to_file(b0, [ds], None, out, tag=ModelTag("base"), opts=opts)
    point = next(wise_points(b0, b1, [0.0]))
    again = evaluate_to_file(point.bundle, [ds], None, out, tag=ModelTag("ft", method="ft", alpha=0.0), opts=opts)
    assert [r.config_hash for r in again] == [r.config_hash for r in zs]
