"""`arf demo` end to end on a tiny configuration: a tiny offline build, the tiny random CLIP, two steps per method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arf.cli import main
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
]


@pytest.mark.integration
def test_demo_runs_end_to_end_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARF_DATA", str(tmp_path / "data"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--set", *TINY]) == 0

    report = out / "report"
    table = (report / "results.md").read_text()
    for method in ("zeroshot", "ft", "flyp", "arf"):
        assert f"| {method}" in table, table
    assert (report / "wise_id_vs_ood.png").stat().st_size > 1000
    assert (report / "wise_id_vs_zeroshot.png").stat().st_size > 1000
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"zeroshot", "ft", "flyp", "arf"}
    assert {r["alpha"] for r in records if r["method"] == "arf"} == {0.0, 1.0}
    assert {r["role"] for r in records} >= {"id", "shift", "zeroshot"}
    captions = out / "anchors" / "captions"
    assert any(captions.rglob("*.parquet"))

    # A re-run with the same inputs trains nothing again and appends no duplicate records.
    finals = {p: p.stat().st_mtime_ns for p in (out / "train").glob("*/final/open_clip_model.safetensors")}
    assert len(finals) == 3
    assert main(["demo", "--out", str(out), "--set", *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in finals} == finals
    assert len((out / "records.jsonl").read_text().splitlines()) == len(records)
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) >= {"data", "zeroshot", "captions", "pool", "train", "wise", "report"}


def test_demo_rejects_unknown_method(tmp_path: Path) -> None:
    from arf.demo import load_demo_config

    with pytest.raises(ConfigError, match=r"unknown method config 'nope'; choose from .*flyp"):
        load_demo_config(overrides=["methods=[nope]", f"out={tmp_path}"])
    assert main(["demo", "--out", str(tmp_path), "--set", "methods=[nope]"]) == 2
