"""``arf wise-probe``: the α rule, the text fraction, config errors, and the recipe end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arf.cli import main
from arf.errors import ConfigError
from arf.evaluate.zeroshot import is_image_tower_key
from arf.models import create_model
from arf.wise_probe import WiseProbeConfig, choose_alpha, text_fraction
from train_fixtures import make_benchmark


def test_choose_alpha_takes_the_smallest_alpha_over_the_floor() -> None:
    val = {0.5: 97.2, 0.6: 97.6, 0.7: 98.0, 0.8: 98.2, 0.9: 98.3}
    assert choose_alpha(val, 97.94) == 0.7
    assert choose_alpha(val, 97.0) == 0.5
    # No α reaches the floor, or no floor: the best val, the smaller α of equals.
    assert choose_alpha(val, 99.0) == 0.9
    assert choose_alpha({0.5: 90.0, 0.6: 91.0, 0.7: 91.0}, None) == 0.6


def test_text_fraction_is_t_over_alpha_to_six_digits() -> None:
    assert text_fraction(0.2, 0.7) == 0.285714
    assert text_fraction(0.2, 0.5) == 0.4
    with pytest.raises(ConfigError, match="text_alpha"):
        text_fraction(0.8, 0.7)


@pytest.mark.parametrize("fields, match", [
    ({"alphas": "0:0.5:0.25"}, "alphas: must be > 0"),
    ({"alphas": "0.5,1.5"}, "alphas"),
    ({"alphas": "0.5:0.9:0.1", "text_alpha": 0.6}, "text_alpha: 0.6 is more than the smallest"),
    ({"text_alpha": 1.5}, "text_alpha"),
    ({"probe_config": "no/such/lp.yaml"}, "probe_config: config file not found"),
])
def test_config_errors_name_the_field(fields: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        WiseProbeConfig(**fields).validate()


@pytest.fixture
def flyp_run(tmp_path: Path) -> tuple[Path, Path]:
    from arf.train import TrainConfig, train

    root = make_benchmark(tmp_path / "bench", per_class=4, val_per_class=3)
    run = train(TrainConfig(method="flyp", model="arf:tiny-clip", data_root=str(root), out_dir=str(tmp_path / "runs"),
                            name="flyp-s0", batch_size=8, max_steps=2, lr=1e-3, progress=False, tensorboard=False,
                            checkpoint_every=0))
    return root, run / "final"


PROBE = ["--probe-set", "max_steps=2", "--probe-set", "batch_size=8", "--probe-set", "progress=false"]


@pytest.mark.integration
def test_recipe_end_to_end_keeps_the_image_tower_and_probe_and_moves_the_text_side(
        flyp_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, final = flyp_run
    out = tmp_path / "wp"
    args = ["wise-probe", "--zeroshot", "arf:tiny-clip", "--finetuned", str(final), "--suite", "offline",
            "--data-root", str(root), "--out", str(out), "--alphas", "0.5,1", "--text-alpha", "0.25",
            "--no-progress", *PROBE]
    assert main(args) == 0
    choice = json.loads((out / "wise_probe.json").read_text())
    assert choice["alpha"] in (0.5, 1.0) and set(choice["mean_val"]) == {"0.5", "1"}
    a = choice["alpha"]
    model_dir = out / "flyp-s0"
    probe = model_dir / f"probe-a{a:g}" / "final"
    (result,) = [Path(p) for p in choice["finals"]]
    assert result.parent == model_dir / "final"
    # The interpolated checkpoints are gone (each probe's final holds them), the probes' resume points too.
    assert not any((model_dir / "wise").glob("alpha_*")) and not (probe.parent / "checkpoints").exists()

    base = create_model("arf:tiny-clip").model.state_dict()
    p = load_file(str(probe / "open_clip_model.safetensors"))
    r = load_file(str(result / "open_clip_model.safetensors"))
    tuned = load_file(str(final / "open_clip_model.safetensors"))
    moved = 0
    for k, v in r.items():
        if is_image_tower_key(k):
            assert torch.equal(v, p[k]), k          # step 3 leaves the image tower as probed
        elif v.is_floating_point() and not torch.equal(base[k], tuned[k]):
            # text side: 0.25 of the finetuned model's, i.e. base + 0.25 (tuned - base)
            want = base[k].float() + 0.25 * (tuned[k].float() - base[k].float())
            torch.testing.assert_close(v.float(), want, rtol=1e-4, atol=1e-5)
            moved += 1
    assert moved > 0
    head, probe_head = (load_file(str(d / "head.safetensors")) for d in (result, probe))
    assert all(torch.equal(head[k], probe_head[k]) for k in probe_head)
    meta = json.loads((result / "arf.json").read_text())
    assert meta["wise_probe"]["alpha"] == a and meta["wise_probe"]["text_alpha"] == 0.25

    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"flyp-wp"} and {r["set"] for r in records} == {"val"}
    assert all(r["alpha"] is None and r["seed"] == 0 for r in records)
    printed = capsys.readouterr().out
    assert f"alpha {a:g}" in printed and "records appended" in printed

    # Only the chosen α's probe is kept; every α's val stays in probe_val.json.
    other = 1.0 if a == 0.5 else 0.5
    assert not (model_dir / f"probe-a{other:g}").exists()
    known = json.loads((model_dir / "probe_val.json").read_text())
    assert {k: v["val"] for k, v in known.items()} == choice["mean_val"]

    # A re-run trains nothing and evaluates nothing again (nor brings the removed probe back).
    stamp = {q: q.stat().st_mtime_ns for q in (probe / "open_clip_model.safetensors", out / "records.jsonl",
                                               model_dir / "select.jsonl", model_dir / "probe_val.json")}
    # A removal a kill interrupted (the probe folder is renamed first, so it is whole or gone) is cleared.
    left = model_dir / ".probe-a0.7.removing" / "final"
    left.mkdir(parents=True)
    (left / "arf.json").write_text("{}")
    assert main(args) == 0
    assert {q: q.stat().st_mtime_ns for q in stamp} == stamp
    assert not (model_dir / f"probe-a{other:g}").exists() and not left.parent.exists()
    assert not list(model_dir.glob(".*.removing"))

    # A later choice of the removed α (here: a grid of that α alone) takes its val from probe_val.json and trains
    # that probe again — the same weights as a run that kept every probe.
    only = [x if x != "0.5,1" else f"{other:g}" for x in args]
    assert main(only) == 0
    assert json.loads((out / "wise_probe.json").read_text())["alpha"] == other
    kept = tmp_path / "wp-kept"
    assert main([*[x if x != str(out) else str(kept) for x in args], "--keep-probes"]) == 0
    assert (kept / "flyp-s0" / "probe-a0.5").is_dir() and (kept / "flyp-s0" / "probe-a1").is_dir()
    again, first = (load_file(str(d / "flyp-s0" / f"probe-a{other:g}" / "final" / "open_clip_model.safetensors"))
                    for d in (out, kept))
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)

    # Another probe config retrains the probes, and the result follows the new probe, not the cached old one.
    assert main([*args, "--probe-set", "max_steps=3"]) == 0
    choice = json.loads((out / "wise_probe.json").read_text())
    probe = model_dir / f"probe-a{choice['alpha']:g}" / "final"
    head, probe_head = (load_file(str(Path(d) / "head.safetensors")) for d in (choice["finals"][0], probe))
    assert all(torch.equal(head[k], probe_head[k]) for k in probe_head)
    assert json.loads((probe / "arf.json").read_text())["train"]["steps"] == 3


def test_cli_errors_name_the_option(flyp_run: tuple[Path, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    root, final = flyp_run
    common = ["wise-probe", "--zeroshot", "arf:tiny-clip", "--finetuned", str(final), "--suite", "offline",
              "--data-root", str(root), "--out", str(tmp_path / "wp")]
    assert main([*common, "--text-alpha", "lots"]) == 2
    assert "--text-alpha: 'lots'" in capsys.readouterr().err
    assert main([*common, "--select-set", "id"]) == 2
    assert "select_set: 'id' is not among the evaluated sets; choose from train, val" in capsys.readouterr().err


@pytest.mark.parametrize(("probe_config", "passed"), [("configs/offline/lp.yaml", True),
                                                      ("configs/paper/lp.yaml", False)])
def test_data_root_reaches_the_probe_only_for_built_suites(probe_config: str, passed: bool, tmp_path: Path) -> None:
    # data_root is the evaluation suites' root; a folder-suite probe (ImageNet train) keeps its own data_root.
    from arf.config import load_config
    from arf.train.config import TrainConfig
    from arf.wise_probe import CONFIG_DIR, _probe_config

    path = str(CONFIG_DIR.parent / probe_config)
    own = load_config(TrainConfig, path, []).data_root
    cfg = WiseProbeConfig(probe_config=path, data_root="/data/root")
    tcfg = _probe_config(cfg, "m", tmp_path, 0.5, seed=1)
    assert (tcfg.data_root, tcfg.seed) == ("/data/root" if passed else own, 1)
    # A data_root the caller sets on the probe itself wins over the suites' root.
    cfg.probe_overrides = ["data_root=/probe/root"]
    assert _probe_config(cfg, "m", tmp_path, 0.5, seed=1).data_root == "/probe/root"


def test_cli_data_root_reaches_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import arf.cli.evaluate
    import arf.wise_probe
    from arf.wise_probe import WiseProbeResult

    seen = {}

    def fake_run(cfg, finetuned, out, sets, **kw):
        seen["cfg"] = cfg
        return WiseProbeResult(alpha=0.5, mean_val={0.5: 1.0}, finals=[], records=[])

    monkeypatch.setattr(arf.wise_probe, "run_wise_probe", fake_run)
    monkeypatch.setattr(arf.cli.evaluate, "load_sets", lambda *a, **k: [])
    assert main(["wise-probe", "--finetuned", "x", "--suite", "offline", "--out", str(tmp_path), "--data-root",
                 "/data/root", "--probe-set", "seed=1"]) == 0
    assert (seen["cfg"].data_root, seen["cfg"].probe_overrides) == ("/data/root", ["seed=1"])


@pytest.mark.parametrize(("store", "want"), [(None, "auto"), ("/elsewhere", "/elsewhere"), ("null", None)])
def test_a_probe_reads_the_shared_image_blocks_through_one_store(
        store: str | None, want: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import arf.evaluate.wise
    import arf.train.cached
    import arf.wise_probe as wp
    from arf.train.run_hash import train_hash

    trained = []
    monkeypatch.setattr(arf.evaluate.wise, "wise_sweep", lambda *a, **kw: [])
    monkeypatch.setattr(arf.train.cached, "train_cached", lambda tcfg, **kw: trained.append(tcfg))
    monkeypatch.setattr(wp, "_shared_image_blocks", lambda zeroshot, finetuned: 5)
    cfg = WiseProbeConfig(probe_overrides=[] if store is None else [f"prefix_store={store}"])
    folder = tmp_path / "wp" / "flyp-s0"
    tcfg = wp._probe_at(cfg, folder, 0.5, 0)
    wp.train_probe(cfg, tcfg, "ft-final", 0.5, "flyp", 0)
    (got,) = trained
    if want is None:  # no store: the whole tower, as before
        assert (got.feature_prefix_blocks, got.prefix_store) == (0, None)
    else:
        assert got.feature_prefix_blocks == 5
        assert got.prefix_store == (str(tmp_path / "wp" / "prefix-store") if want == "auto" else want)
    assert train_hash(got) == train_hash(tcfg)  # cached probes stay valid


def test_probe_and_final_evaluations_read_the_shared_prefix_from_the_store_with_the_same_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's evaluations (each probe on the selection set, step 3's model on every set) take θ0's frozen
    image blocks from the probes' store: the records are those of the whole tower, which runs on no set."""
    import arf.data
    import arf.evaluate.prefix_cache as prefix_cache
    import arf.evaluate.runner as runner
    from arf.models import save_checkpoint
    from arf.wise_probe import run_wise_probe
    from train_fixtures import effnet_bundle

    root = make_benchmark(tmp_path / "bench", per_class=4, val_per_class=3)
    b = effnet_bundle()
    zs = save_checkpoint(b, tmp_path / "zs")
    torch.manual_seed(1)
    with torch.no_grad():  # θ1: image blocks 2 on, the image head and the text tower moved; stem, blocks 0-1 shared
        for m in (*b.model.visual.trunk.blocks[2:], b.model.visual.head, b.model.transformer):
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    ft = save_checkpoint(b, tmp_path / "ft", extra={"method": "flyp", "seed": 0})
    sets = arf.data.get_suite("offline", root).sets

    whole = []  # the sets each path encoded through the whole image tower
    for mod in (runner, prefix_cache):
        real = mod.encode_set
        monkeypatch.setattr(mod, "encode_set", lambda bundle, ds, opts, real=real: whole.append(ds.name)
                            or real(bundle, ds, opts))

    def recipe(out: Path, store: str) -> list[tuple]:
        cfg = WiseProbeConfig(zeroshot=str(zs), alphas="0.5,1", data_root=str(root), text_alpha=0.5,
                              probe_overrides=["max_steps=2", "batch_size=8", "progress=false",
                                               f"prefix_store={store}"])
        res = run_wise_probe(cfg, [str(ft)], out, sets)
        select = [json.loads(x) for x in (out / "flyp-s0" / "select.jsonl").read_text().splitlines()]
        return ([(r["alpha"], r["metric"], r["value"], r["n"]) for r in select]
                + [(r.set, r.metric, r.value, r.n, r.config_hash) for r in res.records])

    plain = recipe(tmp_path / "plain", "null")
    assert whole == ["val"] * 3  # two probes on the selection set, then step 3's model
    whole.clear()
    stored = recipe(tmp_path / "stored", "auto")
    assert stored == plain and whole == []
    assert list((tmp_path / "stored" / "prefix-store").rglob("*.safetensors"))


def test_shared_image_blocks_loads_the_pair_once_per_state_of_their_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import arf.models
    import arf.wise_probe as wp
    from arf.models import save_checkpoint
    from train_fixtures import effnet_bundle

    theta0 = save_checkpoint(effnet_bundle(), tmp_path / "theta0")  # a trunk that splits into blocks
    theta1 = save_checkpoint(effnet_bundle(), tmp_path / "theta1")  # the same draw: every block shared
    loads = []
    real = arf.models.create_model
    monkeypatch.setattr(arf.models, "create_model", lambda m, **kw: loads.append(m) or real(m, **kw))
    n = wp._shared_image_blocks(str(theta0), str(theta1))
    assert n > 0 and len(loads) == 2
    assert wp._shared_image_blocks(str(theta0), str(theta1)) == n and len(loads) == 2  # the next probe: no load
    weights = theta1 / "open_clip_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # retrained in place
    assert wp._shared_image_blocks(str(theta0), str(theta1)) == n and len(loads) == 4
