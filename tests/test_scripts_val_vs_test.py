"""scripts/val_vs_test.py: how the val splits rank finetuned models against the test averages, on synthetic records."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from arf.evaluate.records import Record, append_records

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "val_vs_test.py"


def _recs(method: str, seed: int, sets: dict[str, tuple[str, float]], alpha: float | None = None) -> list[Record]:
    return [Record(f"{method}-s{seed}", method, alpha, name, role, "top1", v, 100, "h", seed)
            for name, (role, v) in sets.items()]


def _run(monkeypatch, capsys, *argv: str) -> list[str]:
    monkeypatch.setattr(sys, "argv", ["val_vs_test.py", *argv])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    return capsys.readouterr().out.strip().splitlines()


def test_val_vs_test_joins_files_per_model_and_ranks_each_val_column_against_each_test_average(
        tmp_path, capsys, monkeypatch):
    test, val = tmp_path / "test.jsonl", tmp_path / "val.jsonl"
    # Three models: shift val orders them as OOD avg does (+1), val the reverse (−1).
    for i, (method, seed) in enumerate((("ft", 0), ("ft", 1), ("arf", 0))):
        append_records(test, _recs(method, seed, {"val": ("val", 99.0 - i), "id": ("id", 98.0 - i),
                                                  "s1": ("shift", 20.0 + i), "s2": ("shift", 22.0 + i)}))
        append_records(test, _recs(method, seed, {"s1": ("shift", 0.0)}, alpha=0.5))  # WiSE-FT: left out
        append_records(val, _recs(method, seed, {"vs1": ("val-shift", 60.0 + 2 * i), "vs2": ("val-shift", 70.0)}))
    append_records(test, [Record("arf:mini-clip", "zeroshot", None, "s1", "shift", "top1", 5.0, 100, "h")])
    rows = _run(monkeypatch, capsys, str(test), str(val))
    assert rows[0] == "| method | models | val | shift val avg | ID | OOD avg |"
    assert rows[2] == "| arf | 1 | 97.0 | 67.0 | 96.0 | 23.0 |"  # the shift val sets from the second file
    assert rows[3] == "| ft | 2 | 98.5 | 65.5 | 97.5 | 21.5 |"  # mean over seeds; zeroshot is not a model here
    assert "Spearman(shift val avg, OOD avg) = +1.00 over 3 models" in rows
    assert "Spearman(val, OOD avg) = -1.00 over 3 models" in rows
    # one val split apart from its role's average: vs2 is flat (a tie for every model), vs1 alone ranks as OOD avg
    rows = _run(monkeypatch, capsys, str(test), str(val), "--sets", "vs1,vs2")
    assert rows[0] == "| method | models | val | shift val avg | vs1 | vs2 | ID | OOD avg |"
    assert rows[2] == "| arf | 1 | 97.0 | 67.0 | 64.0 | 70.0 | 96.0 | 23.0 |"
    assert "Spearman(vs1, OOD avg) = +1.00 over 3 models" in rows
    assert "Spearman(vs2, OOD avg) = undefined (a column without spread) over 3 models" in rows


def test_ranks_share_ties_and_spearman_matches_the_definition():
    mod = runpy.run_path(str(SCRIPT))
    assert mod["ranks"](np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 30.0, 20.0, 40.0])
    assert mod["spearman"](a, b) == pytest.approx(0.8)  # 1 − 6·Σd²/(n(n²−1)) = 1 − 6·2/60


def test_val_vs_test_names_files_without_finetuned_models(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    append_records(path, [Record("arf:mini-clip", "zeroshot", None, "s1", "shift", "top1", 5.0, 100, "h")])
    monkeypatch.setattr(sys, "argv", ["val_vs_test.py", str(path)])
    with pytest.raises(SystemExit, match=r"no finetuned-model records in .*r\.jsonl"):
        runpy.run_path(str(SCRIPT), run_name="__main__")
