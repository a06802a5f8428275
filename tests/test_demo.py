"""`arf demo` end to end on a tiny configuration: a tiny offline build, the tiny random CLIP, two steps per method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from arf.cli import main
from arf.config import load_config
from arf.errors import ConfigError

TINY = [
    "model=arf:tiny-clip",
    "methods=[ft,flyp,arf]",
    "seeds=[0]",
    "alphas=0,1",
    "k=4",
    "max_eval_images=16",
    "data.limit_emoji=24",
    "data.n_train_classes=6",
    "data.n_zeroshot_classes=5",
    "data.workers=1",
    "train_overrides=[max_steps=2,batch_size=8,anchor_batch_size=2,freeze_image_blocks=0,checkpoint_every=0,progress=false]",
    "method_overrides={arf: [lambda_ret=0.5]}",
]
# The read-out recipe on one method, as `arf demo --full` runs it on four.
WISE_PROBE = ["wise_probe.methods=[arf]", "wise_probe.alphas=0.5,1", "wise_probe.text_alpha=0.25"]


@pytest.mark.integration
def test_demo_runs_end_to_end_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The benchmark goes to a non-default folder (data.out); the default location stays empty, so any stage that
    # read the default instead of the built root would fail.
    default = tmp_path / "default-data"
    monkeypatch.setenv("ARF_DATA", str(default))
    bench = tmp_path / "elsewhere" / "bench"
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--set", *TINY, *WISE_PROBE, f"data.out={bench}"]
    assert main(args) == 0
    assert (bench / "manifest.json").is_file() and not default.exists()

    report = out / "report"
    table = (report / "results.md").read_text()
    for method in ("zeroshot", "ft", "flyp", "arf", "arf-wp"):
        assert f"| {method} |" in table, table
    assert (report / "wise_id_vs_ood.png").stat().st_size > 1000
    assert (report / "wise_id_vs_zeroshot.png").stat().st_size > 1000
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"zeroshot", "ft", "flyp", "arf", "arf-wp"}
    # The recipe's α floor: the best finetuned method's α = 1 val minus 1; its model is one point (no α).
    best_val = max(r["value"] for r in records if r["set"] == "val" and r["metric"] == "top1" and r["alpha"] == 1.0)
    choice = json.loads((out / "wise-probe" / "arf" / "wise_probe.json").read_text())
    assert choice["min_val"] == pytest.approx(best_val - 1) and choice["alpha"] in (0.5, 1.0)
    assert {r["alpha"] for r in records if r["method"] == "arf-wp"} == {None}
    # The recipe reads the prefix activations the training runs and sweeps stored, not a store of its own.
    probe_cfg = yaml.safe_load(next((out / "wise-probe" / "arf").rglob("probe-a*/config.yaml")).read_text())
    assert probe_cfg["prefix_store"] == str(out / "train" / "prefix-store")
    assert not list((out / "wise-probe").rglob("prefix-store"))
    trained = {m: yaml.safe_load((out / "train" / f"{m}-s0" / "config.yaml").read_text()) for m in ("ft", "arf")}
    assert (trained["arf"]["lambda_ret"], trained["ft"]["lambda_ret"]) == (0.5, 0.0)
    assert trained["arf"]["max_steps"] == trained["ft"]["max_steps"] == 2
    assert {r["alpha"] for r in records if r["method"] == "arf"} == {0.0, 1.0}
    assert {r["role"] for r in records} >= {"id", "shift", "zeroshot"}
    captions = out / "anchors" / "captions"
    assert any(captions.rglob("*.parquet"))
    assert len(list((captions / "corpus_emb").glob("text_emb_*.npy"))) == 1
    anchors = json.loads((out / "anchors" / "retrieved" / "anchors.json").read_text())
    assert anchors["finetune_set"] == "train" and anchors["n_anchors"] > 0
    # The tiny build's pool holds a few OpenClipArt drawings; the demo holds them to the other pairs' median cosine.
    assert (anchors["pair_floor"], anchors["pair_floor_paths"]) == ("median", "*/pool/openclipart/*")
    assert anchors["pair_floor_value"] is not None
    # α = 0 is the zero-shot model for every method: its records are the zero-shot evaluation's, not new ones.
    zeroshot = {(r["set"], r["metric"]): r["config_hash"] for r in records if r["method"] == "zeroshot"}
    for method in ("flyp", "arf"):
        alpha0 = {(r["set"], r["metric"]): r["config_hash"] for r in records
                  if r["method"] == method and r["alpha"] == 0.0}
        assert alpha0 == zeroshot, method

    # A re-run with the same inputs trains nothing again and appends no duplicate records.
    finals = {p: p.stat().st_mtime_ns for p in (out / "train").glob("*/final/open_clip_model.safetensors")}
    assert len(finals) == 3
    # Finished runs keep final/ only: their resume points (weights + optimizer state) are gone.
    assert not list((out / "train").glob("*/checkpoints")) and not list(out.rglob("step_*"))
    probes = list((out / "wise-probe").rglob("open_clip_model.safetensors"))
    assert len(probes) == 2  # the chosen α's probe (the other's val is in probe_val.json) and the result
    finals.update({p: p.stat().st_mtime_ns for p in probes})
    cached = [out / "anchors" / "retrieved" / "anchors.parquet", *(out / "anchors" / "pool-emb").rglob("*.faiss*"),
              *(captions / "corpus_emb").glob("*.npy")]
    finals.update({p: p.stat().st_mtime_ns for p in cached})
    # Records left by older weights of a method (another config_hash) or by alphas no longer swept are not
    # reported and leave the records file.
    ft1 = next(r for r in records if r["method"] == "ft" and r["alpha"] == 1.0 and r["metric"] == "top1")
    stale = [{**ft1, "config_hash": "0ldc0nf1g000", "value": 99.25},
             {**ft1, "alpha": 0.3, "config_hash": "0ldc0nf1g001", "value": 98.75}]
    with (out / "records.jsonl").open("a") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in stale)
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in finals} == finals
    kept = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(map(json.dumps, kept)) == sorted(map(json.dumps, records))
    assert [json.loads(line) for line in (out / "records.jsonl.stale").read_text().splitlines()] == stale
    summary = (report / "summary.json").read_text() + (report / "results.csv").read_text()
    assert "99.25" not in summary and "98.75" not in summary and "0.3" not in json.dumps(
        [row["alpha"] for row in json.loads((report / "summary.json").read_text())["rows"]])
    ft_row = next(row for row in json.loads((report / "summary.json").read_text())["rows"] if row["label"] == "ft")
    assert ft_row["cells"][ft1["set"]]["mean"] == pytest.approx(ft1["value"])
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) >= {"data", "zeroshot", "captions", "pool", "train", "wise", "wise-probe", "report"}
    memory = json.loads((out / "peak_memory.json").read_text())
    assert set(memory) == set(timings) and all(m["rss_mb"] > 0 and m["cuda_mb"] is None for m in memory.values())
    # Whether a stage set the process's peak (exact) or stayed below one (sampled) depends on the tests before.
    assert all(isinstance(m["rss_sampled"], bool) for m in memory.values())
    env = json.loads((out / "env.json").read_text())  # which machine made these numbers
    assert env["cpu"] and env["packages"]["torch"]

    # The run folder moved elsewhere (the old place gone, so nothing can read it) holds the same runs: nothing is
    # trained, retrieved or probed again, and the report is the same.
    moved = tmp_path / "moved" / "demo"
    moved.parent.mkdir()
    out.rename(moved)
    there = {moved / p.relative_to(out): t for p, t in finals.items()}
    assert main(["demo", "--out", str(moved), *args[3:]]) == 0
    assert {p: p.stat().st_mtime_ns for p in there} == there
    assert (moved / "report" / "results.md").read_text() == table
    again = [json.loads(line) for line in (moved / "records.jsonl").read_text().splitlines()]
    assert {r["model"] for r in again} <= {"arf:tiny-clip"} | {str(p) for p in moved.rglob("final")} | {
        str(p) for p in moved.rglob("alpha_*")}
    assert sorted((r["method"], r["alpha"], r["set"], r["metric"], r["value"], r["config_hash"]) for r in again) == \
        sorted((r["method"], r["alpha"], r["set"], r["metric"], r["value"], r["config_hash"]) for r in records)
    # The evaluations under the old paths are these very ones: dropped, not kept as stale beside the real ones.
    assert [json.loads(line) for line in (moved / "records.jsonl.stale").read_text().splitlines()] == stale


def test_demo_rejects_unknown_method(tmp_path: Path) -> None:
    from arf.demo import load_demo_config

    with pytest.raises(ConfigError, match=r"unknown method config 'nope'; choose from .*flyp"):
        load_demo_config(overrides=["methods=[nope]", f"out={tmp_path}"])
    assert main(["demo", "--out", str(tmp_path), "--set", "methods=[nope]"]) == 2


def test_small_protocol_keeps_its_own_two_epoch_schedule(tmp_path: Path) -> None:
    # configs/offline holds the full protocol's val choices (16 epochs at lr 1e-4, ft 8 at 3e-4, arf λ_cap 0 and
    # λ_ret 0.5, the paper's two anchors as arf-both at 0.3 each); the 2-epoch demo
    # chose lr 3e-4 and arf λ 0.1 on val and must train those, while ft / flyp (which refuse anchor weights) get
    # only the shared overrides.
    from arf.demo import load_demo_config, method_config, method_train_overrides
    from arf.train.config import TrainConfig

    # The demo points arf at the anchor files it made; stand-ins here, since the config checks they exist.
    (tmp_path / "captions.parquet").touch()
    (tmp_path / "anchors.parquet").touch()
    (tmp_path / "anchors.json").touch()
    files = [f"captions={tmp_path / 'captions.parquet'}", f"anchors={tmp_path}"]
    small, full = load_demo_config(), load_demo_config(full=True)
    arf_small = load_config(TrainConfig, method_config("arf"), [*files, *method_train_overrides(small, "arf")])
    assert (arf_small.epochs, arf_small.lr, arf_small.lambda_cap, arf_small.lambda_ret) == (2, 3e-4, 0.1, 0.1)
    arf_full = load_config(TrainConfig, method_config("arf"), [*files, *method_train_overrides(full, "arf")])
    assert (arf_full.epochs, arf_full.lr, arf_full.lambda_cap, arf_full.lambda_ret) == (16, 1e-4, 0.0, 0.5)
    both = load_config(TrainConfig, method_config("arf-both"), [*files, *method_train_overrides(full, "arf-both")])
    assert (both.epochs, both.lr, both.lambda_cap, both.lambda_ret) == (16, 1e-4, 0.3, 0.3)
    arf_ft = load_config(TrainConfig, method_config("arf-ft"), [*files, *method_train_overrides(full, "arf-ft")])
    assert (arf_ft.method, arf_ft.epochs, arf_ft.lr, arf_ft.lambda_ret) == ("arf-ft", 8, 3e-4, 0.2)
    assert "arf-ft" in full.methods
    for method, schedule in (("ft", (8, 3e-4)), ("flyp", (16, 1e-4))):
        tcfg = load_config(TrainConfig, method_config(method), method_train_overrides(small, method))
        assert (tcfg.epochs, tcfg.lr, tcfg.lambda_cap, tcfg.lambda_ret) == (2, 3e-4, 0.0, 0.0)
        tcfg = load_config(TrainConfig, method_config(method), method_train_overrides(full, method))
        assert (tcfg.epochs, tcfg.lr) == schedule


@pytest.mark.parametrize(("override", "match"), [
    ("method_overrides={afr: [lambda_cap=0.1]}", r"method_overrides\.afr: names a method this protocol does not run; "
                                                 r"choose from ft, flyp, arf"),
    ("method_overrides={arf: lambda_cap}", r"method_overrides\.arf: must be a list of key=value strings"),
    ("method_overrides={arf: [lambda_cap]}", r"method_overrides\.arf: must be a list of key=value strings"),
    ("wise_probe.methods=[lpft]", r"wise_probe\.methods: 'lpft' is not a method this protocol trains"),
    ("wise_probe={methods: [arf], alphas: '0.1:0.5:0.1'}", r"text_alpha: 0\.2 is more than the smallest"),
])
def test_method_overrides_are_checked(tmp_path: Path, override: str, match: str) -> None:
    from arf.demo import load_demo_config

    with pytest.raises(ConfigError, match=match):
        load_demo_config(overrides=[override, f"out={tmp_path}"])


def test_suite_spec_names_a_data_root_and_parses_back(tmp_path: Path) -> None:
    from arf.anchors.sources import parse_suite_spec, suite_spec

    root = tmp_path / "odd@name" / "v1"
    assert suite_spec("offline", "train") == "suite:offline/train"
    assert parse_suite_spec(suite_spec("offline", "train")) == ("offline", "train", None)
    assert parse_suite_spec(suite_spec("offline", "train", root)) == ("offline", "train", root.resolve())
    for bad in ("suite:offline", "suite:/train", "suite:offline/train@"):
        with pytest.raises(ConfigError, match="suite:<suite>/<set>"):
            parse_suite_spec(bad)


def test_stage_timer_splits_set_up_from_the_protocol() -> None:
    # The laptop budget is read off the protocol part: rendering data and aligning the base happen once per machine.
    from arf.demo import StageTimer

    timer = StageTimer({"data": 60.0, "base": 300.0, "zeroshot": 30.0, "train": 240.0, "wise": 150.0})
    assert timer.summary() == "13.0 min: set-up (data + base) 6.0 min, protocol 7.0 min"
