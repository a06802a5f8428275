"""scripts/seed_deltas.py: per-seed differences of role averages, on synthetic records."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from arf.evaluate.records import Record, append_records

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "seed_deltas.py"


def _records(method: str, seed: int, id_: float, shift: tuple[float, float], zs: float,
             alpha: float | None = None) -> list[Record]:
    sets = [("id", "id", id_), ("shift-a", "shift", shift[0]), ("shift-b", "shift", shift[1]), ("zs", "zeroshot", zs)]
    return [Record(f"{method}-s{seed}", method, alpha, name, role, "top1", v, 100, "h", seed) for name, role, v in sets]


def test_seed_deltas_prints_one_row_per_seed_with_differences_of_role_averages(tmp_path, capsys, monkeypatch):
    path = tmp_path / "records.jsonl"
    append_records(path, _records("arf", 0, 90.0, (30.0, 20.0), 40.0) + _records("ft", 0, 91.0, (20.0, 20.0), 35.0)
                   + _records("arf", 1, 80.0, (10.0, 10.0), 10.0) + _records("arf", 0, 70.0, (0.0, 0.0), 0.0, 0.5))
    monkeypatch.setattr(sys, "argv", ["seed_deltas.py", str(path), "--method", "arf", "--peers", "ft"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[2] == "| 0 | 90.0 / 25.0 / 40.0 | -1.0 / +5.0 / +5.0 |"  # OOD avg = mean of the two shift sets
    assert rows[3] == "| 1 | 80.0 / 10.0 / 10.0 | – |"  # no ft record for seed 1; the α = 0.5 row is not mixed in


def test_seed_deltas_names_a_method_with_no_records(tmp_path, monkeypatch):
    path = tmp_path / "records.jsonl"
    append_records(path, _records("ft", 0, 91.0, (20.0, 20.0), 35.0))
    monkeypatch.setattr(sys, "argv", ["seed_deltas.py", str(path), "--method", "arf"])
    with pytest.raises(SystemExit, match="no records of arf"):
        runpy.run_path(str(SCRIPT), run_name="__main__")


def test_seed_deltas_matches_an_alpha_written_from_a_float_range(tmp_path, capsys, monkeypatch):
    path = tmp_path / "records.jsonl"
    alpha = 0.1 * 3  # 0.30000000000000004, as `--alphas 0:1:0.1` writes it
    append_records(path, _records("arf", 0, 90.0, (30.0, 20.0), 40.0, alpha)
                   + _records("ft", 0, 91.0, (20.0, 20.0), 35.0, alpha))
    monkeypatch.setattr(sys, "argv", ["seed_deltas.py", str(path), "--method", "arf@0.3", "--peers", "ft@0.3"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    assert capsys.readouterr().out.strip().splitlines()[2] == "| 0 | 90.0 / 25.0 / 40.0 | -1.0 / +5.0 / +5.0 |"
