"""``arf eval`` / ``arf wise`` / ``arf report`` in-process on arf:tiny-clip and a tiny offline-layout suite."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from arf.cli import main
from arf.evaluate import Head, read_records, save_head
from arf.models import create_model, save_checkpoint
from evaluate_fixtures import NAMES, PALETTE

SETS = {"train": ("train", [0, 1, 2]), "idv": ("id", [0, 1, 2]), "sh": ("shift", [0, 1, 2]),
        "zs": ("zeroshot", [3, 4, 5, 6, 7, 0])}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A benchmark in the offline layout (manifest.json, one parquet per set, class-name JSON)."""
    root = tmp_path_factory.mktemp("offline")
    (root / "img").mkdir()
    (root / "classnames").mkdir()
    manifest = {"version": "test", "sets": {}}
    for name, (role, classes) in SETS.items():
        paths, labels = [], []
        for j, c in enumerate(classes):
            for i in range(2):
                rel = f"img/{name}_{c}_{i}.png"
                Image.new("RGB", (40, 40), PALETTE[c]).save(root / rel)
                paths.append(rel)
                labels.append(j)
        pq.write_table(pa.table({"path": paths, "label": labels}), root / f"{name}.parquet")
        (root / "classnames" / f"{name}.json").write_text(json.dumps([NAMES[c] for c in classes]))
        manifest["sets"][name] = {"file": f"{name}.parquet", "classnames": f"classnames/{name}.json", "role": role,
                                  "templates": ["a photo of a {}."], "reference": "train"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A 'finetuned' tiny-clip: perturbed weights and a trained head over the train classes."""
    d = tmp_path_factory.mktemp("ft") / "final"
    b = create_model("arf:tiny-clip")
    with torch.no_grad():
        for p in b.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(b, d, extra={"method": "ft", "seed": 3})
    dim = b.model.encode_text(b.tokenizer(["x"])).shape[-1]
    save_head(Head(torch.randn(3, dim), torch.zeros(3), [NAMES[c] for c in (0, 1, 2)], kind="trained",
                   reference="train", templates=["a photo of a {}."]), d)
    return d


def test_eval_prints_table_and_appends_records(bench, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    args = ["eval", "--model", "arf:tiny-clip", "--suite", "offline", "--data-root", str(bench), "--out", str(out),
            "--no-progress", "--batch-size", "4"]
    assert main(args) == 0
    text = capsys.readouterr().out
    for s in ("idv", "sh", "zs", "ID", "OOD avg", "zero-shot avg"):
        assert s in text
    recs = read_records(out)
    assert {r.set for r in recs} == {"idv", "sh", "zs"}  # role train skipped
    assert {(r.set, r.metric) for r in recs} >= {("zs", "top5"), ("idv", "top1")}
    assert all(r.method == "zeroshot" and r.n > 0 and 0 <= r.value <= 100 for r in recs)
    # a second run finds every set recorded for these weights and evaluates nothing
    assert main(args) == 0
    assert read_records(out) == recs


def test_eval_sets_evaluates_only_the_named_sets(bench, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    base = ["eval", "--model", "arf:tiny-clip", "--suite", "offline", "--data-root", str(bench), "--out", str(out),
            "--no-progress", "--batch-size", "4"]
    assert main([*base, "--sets", "zs,sh"]) == 0
    assert {r.set for r in read_records(out)} == {"sh", "zs"}
    assert main([*base, "--sets", "sh,nope"]) == 2
    err = capsys.readouterr().err
    assert "--sets" in err and "unknown set 'nope'" in err and "choose from train, idv, sh, zs" in err


def test_eval_checkpoint_reads_method_seed_and_head(bench, finetuned, tmp_path):
    out = tmp_path / "r.jsonl"
    assert main(["eval", "--model", str(finetuned), "--suite", "offline", "--data-root", str(bench), "--out",
                 str(out), "--no-progress"]) == 0
    recs = read_records(out)
    assert {(r.method, r.seed) for r in recs} == {("ft", 3)}
    # the trained head covers idv/sh (its class names); zs is another label space → the model's zero-shot head
    assert {r.set: r.head for r in recs} == {"idv": "trained", "sh": "trained", "zs": "zeroshot"}


def test_wise_writes_checkpoints_and_records_then_report(bench, finetuned, tmp_path, capsys):
    out = tmp_path / "wise"
    assert main(["wise", "--zeroshot", "arf:tiny-clip", "--finetuned", str(finetuned), "--alphas", "0:1:0.5",
                 "--out", str(out), "--eval", "offline", "--data-root", str(bench), "--no-progress"]) == 0
    assert "OOD avg" in capsys.readouterr().out
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == ["alpha_0.000", "alpha_0.500", "alpha_1.000"]
    zs, ft = create_model("arf:tiny-clip").model.state_dict(), create_model(str(finetuned)).model.state_dict()
    a0 = create_model(str(out / "alpha_0.000")).model.state_dict()
    a1 = create_model(str(out / "alpha_1.000")).model.state_dict()
    a5 = create_model(str(out / "alpha_0.500")).model.state_dict()
    for k in zs:
        assert torch.equal(a0[k], zs[k]) and torch.equal(a1[k], ft[k])
        if zs[k].is_floating_point():
            assert torch.allclose(a5[k], (zs[k] + ft[k]) / 2, atol=1e-6)
    meta = json.loads((out / "alpha_0.500" / "arf.json").read_text())
    assert meta["wise"]["alpha"] == 0.5 and meta["method"] == "ft" and meta["head"]["classnames"]
    recs = read_records(out / "records.jsonl")
    assert sorted({r.alpha for r in recs}) == [0.0, 0.5, 1.0]
    assert all(r.method == "ft" for r in recs)
    assert len({r.config_hash for r in recs if r.set == "zs"}) == 3  # weights differ per alpha
    # resume: nothing is evaluated or written again
    mtime = (out / "alpha_0.500" / "open_clip_model.safetensors").stat().st_mtime_ns
    assert main(["wise", "--zeroshot", "arf:tiny-clip", "--finetuned", str(finetuned), "--alphas", "0:1:0.5",
                 "--out", str(out), "--eval", "offline", "--data-root", str(bench), "--no-progress"]) == 0
    assert read_records(out / "records.jsonl") == recs
    assert (out / "alpha_0.500" / "open_clip_model.safetensors").stat().st_mtime_ns == mtime

    rep = tmp_path / "rep"
    assert main(["report", str(out), "--out", str(rep)]) == 0
    text = (rep / "results.md").read_text()
    assert "| ft |" in text and "| zeroshot |" in text and "ft + WiSE-FT (α=0.5)" in text
    assert (rep / "wise_id_vs_ood.png").is_file() and (rep / "wise_id_vs_zeroshot.png").is_file()


def test_wise_text_alpha_holds_the_text_side_while_the_image_tower_sweeps(bench, finetuned, tmp_path, capsys):
    out = tmp_path / "wise"
    args = ["wise", "--zeroshot", "arf:tiny-clip", "--finetuned", str(finetuned), "--alphas", "0.5,1",
            "--text-alpha", "0.25", "--out", str(out), "--eval", "offline", "--data-root", str(bench), "--no-progress"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["alpha_0.500_text_0.250", "alpha_1.000_text_0.250"]
    zs, ft = create_model("arf:tiny-clip").model.state_dict(), create_model(str(finetuned)).model.state_dict()
    mixed = create_model(str(out / "alpha_1.000_text_0.250")).model.state_dict()
    image = [k for k in zs if k.startswith("visual.")]
    text = [k for k in zs
            if not k.startswith("visual.") and zs[k].is_floating_point() and not torch.equal(zs[k], ft[k])]
    assert image and text
    assert all(torch.equal(mixed[k], ft[k]) for k in image)       # the image tower at α 1: the finetuned one
    assert all(torch.allclose(mixed[k], 0.75 * zs[k] + 0.25 * ft[k], atol=1e-6) for k in text)
    meta = json.loads((out / "alpha_0.500_text_0.250" / "arf.json").read_text())
    assert meta["wise"]["alpha"] == 0.5 and meta["wise"]["text_alpha"] == 0.25
    recs = read_records(out / "records.jsonl")
    assert {r.method for r in recs} == {"ft-text0.25"} and sorted({r.alpha for r in recs}) == [0.5, 1.0]
    # resume keeps the folders; a plain sweep into the same folder does not take them for its own
    mtime = (out / "alpha_0.500_text_0.250" / "open_clip_model.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "alpha_0.500_text_0.250" / "open_clip_model.safetensors").stat().st_mtime_ns == mtime
    assert main(["wise", "--zeroshot", "arf:tiny-clip", "--finetuned", str(finetuned), "--alphas", "0.5",
                 "--out", str(out)]) == 0
    assert (out / "alpha_0.500").is_dir()
    capsys.readouterr()
    assert main([*args[:7], "--text-alpha", "1.5", "--out", str(out)]) == 2
    assert "--text-alpha" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["wise", "--zeroshot", "a", "--finetuned", "b", "--alphas", "0:2:0.5", "--out", str(tmp_path)]) == 2
    assert "--alphas" in capsys.readouterr().err
    assert main(["wise", "--zeroshot", "a", "--finetuned", "b"]) == 2
    assert "--eval/--out" in capsys.readouterr().err
    assert main(["eval", "--model", "arf:tiny-clip", "--suite", "nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_wise_alpha0_reuses_the_zeroshot_evaluation_for_every_method(bench, finetuned, tmp_path, monkeypatch):
    """α = 0 is the zero-shot model with its zero-shot heads, whatever the method: evaluated once, recorded per
    method so that each method's curve still starts there."""
    import arf.evaluate.runner as runner
    from arf.data import get_suite
    from arf.evaluate import evaluate_to_file, model_tag
    from arf.evaluate.wise import wise_sweep
    from arf.report.plots import curve_points

    encoded: list[tuple[str, float | None]] = []
    real_encode_set = runner.encode_set

    def counting_encode_set(bundle, ds, opts):
        encoded.append((ds.name, current_alpha[0]))
        return real_encode_set(bundle, ds, opts)

    current_alpha: list[float | None] = [None]
    monkeypatch.setattr(runner, "encode_set", counting_encode_set)
    sets = [s for s in get_suite("offline", root=bench).sets if s.role != "train"]
    records = tmp_path / "records.jsonl"
    opts = runner.EvalOptions(progress=False)
    zs = evaluate_to_file(create_model("arf:tiny-clip"), sets, None, records, tag=model_tag("arf:tiny-clip"),
                          opts=opts)
    assert len(encoded) == len(sets)

    # A FLYP-like checkpoint (no trained head) and the FT one (trained head over the ID classes, same templates).
    flyp = tmp_path / "flyp" / "final"
    b = create_model("arf:tiny-clip")
    with torch.no_grad():
        for p in b.model.parameters():
            p.add_(0.01)
    save_checkpoint(b, flyp, extra={"method": "flyp", "seed": 0})
    for method, ckpt in (("flyp", flyp), ("ft", finetuned)):
        encoded.clear()
        for alpha in (0.0, 1.0):
            current_alpha[0] = alpha
            wise_sweep("arf:tiny-clip", str(ckpt), [alpha], sets=sets, records_path=records, opts=opts,
                       method=method)
        assert [a for _, a in encoded] == [1.0] * len(sets), (method, encoded)   # nothing encoded at α = 0

    recs = read_records(records)
    zs_hash = {(r.set, r.metric): (r.config_hash, r.value) for r in zs}
    for method in ("flyp", "ft"):
        alpha0 = [r for r in recs if r.method == method and r.alpha == 0.0]
        assert {(r.set, r.metric): (r.config_hash, r.value) for r in alpha0} == zs_hash
        assert all(r.head == "zeroshot" for r in alpha0)
    # Each method's curve starts at the zero-shot point.
    pts = curve_points(recs)
    for method in ("flyp", "ft"):
        assert [p.alpha for p in pts[method]] == [0.0, 1.0]
        assert (pts[method][0].x, pts[method][0].y) == (pts["zeroshot"][0].x, pts["zeroshot"][0].y)
