"""Records: JSONL round trip, atomic append, dedupe, role averages, bad lines named, re-reads of an unchanged file."""

from __future__ import annotations

import dataclasses

import pytest

from arf.errors import InputFileError
from arf.evaluate import Record, append_records, dedupe, read_records, role_averages
from arf.evaluate.records import mean_std


def rec(set_, role, value, seed=0, alpha=None, metric="top1"):
    return Record("m", "ft", alpha, set_, role, metric, value, 10, "h", seed)


def test_jsonl_round_trip_and_append(tmp_path):
    path = tmp_path / "r.jsonl"
    a = [rec("x", "id", 50.0), rec("y", "shift", 25.0, alpha=0.5)]
    append_records(path, a)
    append_records(path, [rec("z", "zeroshot", 10.0, seed=None)])
    back = read_records(path)
    assert back == [*a, rec("z", "zeroshot", 10.0, seed=None)]
    assert len(path.read_text().splitlines()) == 3


def test_bad_line_is_named(tmp_path):
    path = tmp_path / "r.jsonl"
    append_records(path, [rec("x", "id", 1.0)])
    with path.open("a") as f:
        f.write('{"model": "m"}\n')
    with pytest.raises(InputFileError, match=r"r.jsonl:2"):
        read_records(path)


def test_dedupe_keeps_last():
    out = dedupe([rec("x", "id", 1.0), rec("x", "id", 2.0), rec("x", "id", 3.0, seed=1)])
    assert sorted(r.value for r in out) == [2.0, 3.0]


def test_role_averages_ignore_other_metrics_and_roles():
    recs = [rec("a", "id", 80.0), rec("b", "shift", 40.0), rec("c", "shift", 60.0), rec("d", "val", 1.0),
            rec("b", "shift", 99.0, metric="top5")]
    assert role_averages(recs) == {"ID": 80.0, "OOD avg": 50.0}


def test_mean_std():
    assert mean_std([2.0]) == (2.0, 0.0)
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)


def test_alpha_key_groups_a_float_ranges_alpha_with_the_written_one():
    from arf.evaluate.records import alpha_key

    assert alpha_key(0.1 * 3) == alpha_key(0.3) == 0.3 and alpha_key(None) is None


def test_averages_by_run_groups_method_alpha_and_seed_after_dedupe():
    from arf.evaluate.records import averages_by_run

    rs = [rec("x", "id", 50.0), rec("y", "shift", 20.0), rec("y", "shift", 30.0),  # re-run: last kept
          rec("x", "id", 60.0, seed=1), rec("x", "id", 70.0, alpha=0.30000000000000004),
          rec("x", "id", 5.0, metric="top5")]
    got = averages_by_run(rs)
    assert got == {("ft", None, 0): {"ID": 50.0, "OOD avg": 30.0}, ("ft", None, 1): {"ID": 60.0},
                   ("ft", 0.3, 0): {"ID": 70.0}}
    assert set(averages_by_run(rs, name=lambda r: r.method + "-x")) == {("ft-x", None, 0), ("ft-x", None, 1),
                                                                          ("ft-x", 0.3, 0)}


def test_read_records_reuses_an_unchanged_file_and_sees_every_change(tmp_path):
    path = tmp_path / "r.jsonl"
    append_records(path, [rec("x", "id", 1.0)])
    first = read_records(path)
    again = read_records(path)
    # The parsed records are shared (a sweep re-reads its file before every evaluation), the list is the caller's.
    assert again == first and again is not first and again[0] is first[0]
    append_records(path, [rec("y", "id", 2.0)])  # atomic replace: a new inode
    assert [r.set for r in read_records(path)] == ["x", "y"]
    # An edit in place (same inode) that changes the size is seen too.
    text = path.read_text().replace('"value": 2.0', '"value": 22.0')
    with path.open("w") as f:
        f.write(text)
    assert [r.value for r in read_records(path)] == [1.0, 22.0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first[0].value = 5.0  # shared records cannot be changed under another caller
