"""scripts/target_check.py: issue 6's target per seed, on synthetic records."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from arf.evaluate.records import Record, append_records

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "target_check.py"
check = runpy.run_path(str(SCRIPT))


def _records(method: str, seed: int, id_: float, shift: float, zs: float, alpha: float | None = None) -> list[Record]:
    sets = [("id", "id", id_), ("shift-a", "shift", shift - 1), ("shift-b", "shift", shift + 1), ("zs", "zeroshot", zs)]
    return [Record(f"{method}-{seed}-{alpha}", method, alpha, name, role, "top1", v, 100, "h", seed)
            for name, role, v in sets]


def test_target_met_in_one_seed_and_missed_on_shift_against_a_wise_ft_point_in_the_other(tmp_path, capsys):
    runs, wise = tmp_path / "records.jsonl", tmp_path / "wise.jsonl"
    append_records(runs, _records("arf-s0", 0, 98.0, 32.0, 41.0) + _records("arf-s1", 1, 98.0, 32.0, 41.0)
                   + _records("lp", 0, 95.0, 24.0, 39.0) + _records("ft", 0, 98.8, 28.0, 28.0)
                   + _records("lp", 1, 95.0, 24.0, 39.0) + _records("ft", 1, 98.8, 28.0, 28.0))
    append_records(wise, _records("ft", 0, 98.0, 29.9, 31.0, alpha=0.9)   # ID within 1 of 98.8: a rival
                   + _records("ft", 0, 90.0, 35.0, 40.0, alpha=0.5)      # far below in ID: not a rival
                   + _records("ft", 1, 98.1, 30.5, 31.0, alpha=0.9))
    assert check["main"]([str(runs), str(wise), "--method", "arf", "--peers", "lp,ft,lpft"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| 0 | 98.0 / 32.0 / 41.0 | -0.80 (ft) | +2.10 (ft@0.9) | +2.00 (lp) | yes |"
    assert out[3] == "|   | (no records of lpft in this seed) | | | | |"
    assert out[4] == "| 1 | 98.0 / 32.0 / 41.0 | -0.80 (ft) | +1.50 (ft@0.9) ✗ | +2.00 (lp) | no |"
    assert out[-1] == "target (≥ 2 on shift and zero-shot, ID within 1): met in 1 of 2 seeds"


def test_seed_suffix_is_dropped_only_when_it_is_the_records_seed():
    r = _records("arf-s1", 1, 1, 1, 1)[0]
    assert check["base_method"](r) == "arf"
    other = _records("arf-s3", 1, 1, 1, 1)[0]  # a name that ends like a seed but is not this record's
    assert check["base_method"](other) == "arf-s3"


def test_a_method_without_records_is_one_clear_error(tmp_path):
    runs = tmp_path / "records.jsonl"
    append_records(runs, _records("ft", 0, 98.8, 28.0, 28.0))
    with pytest.raises(SystemExit, match="no records of arf with a seed"):
        check["main"]([str(runs), "--method", "arf"])


def test_a_sweeps_alpha_1_point_is_the_model_where_no_plain_records_exist(tmp_path, capsys):
    # arf demo records the finetuned models only as α = 1 of their WiSE-FT sweeps.
    runs = tmp_path / "records.jsonl"
    append_records(runs, _records("arf", 0, 97.0, 32.0, 41.0, alpha=1.0)
                   + _records("ft", 0, 98.0, 28.0, 28.0, alpha=1.0) + _records("ft", 0, 97.5, 30.5, 33.0, alpha=0.7)
                   + _records("lp", 0, 95.0, 24.0, 38.0))
    assert check["main"]([str(runs), "--method", "arf", "--peers", "lp,ft"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| 0 | 97.0 / 32.0 / 41.0 | -1.00 (ft) | +1.50 (ft@0.7) ✗ | +3.00 (lp) | no |"
    # Plain records, where they exist, are the model; the α = 1 point does not replace them.
    append_records(runs, _records("arf", 0, 98.0, 33.0, 42.0))
    assert check["main"]([str(runs), "--method", "arf", "--peers", "lp,ft"]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("| 0 | 98.0 / 33.0 / 42.0 |")
