"""train_hash: what makes two runs the same run (cached finals in the demo, `--resume latest`)."""

from __future__ import annotations

import os
from pathlib import Path

from arf.train.config import TrainConfig
from arf.train.run_hash import same_run, train_hash, train_hashes


def _cfg(tmp_path: Path, **kw: object) -> TrainConfig:
    fields: dict[str, object] = {"method": "arf", "model": "arf:tiny-clip", "out_dir": str(tmp_path / "runs"),
                                 "captions": str(tmp_path / "captions.parquet"), "anchors": str(tmp_path / "anchors"),
                                 "lambda_cap": 0.1, "lambda_ret": 0.1, **kw}
    return TrainConfig(**fields)  # type: ignore[arg-type]


def _write(path: Path, data: bytes, mtime: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime, mtime))  # a rewrite within the same clock tick must still count


def test_input_files_are_keyed_by_content_not_path(tmp_path: Path) -> None:
    caps, anchors = tmp_path / "captions.parquet", tmp_path / "anchors" / "anchors.parquet"
    _write(caps, b"captions v1", 1)
    _write(anchors, b"anchors k=50", 1)
    cfg = _cfg(tmp_path)
    h0 = train_hash(cfg)
    assert train_hash(cfg) == h0

    _write(anchors, b"anchors k=8 ", 2)  # regenerated in place: same path, other content
    h1 = train_hash(cfg)
    assert h1 != h0
    _write(caps, b"captions v2", 2)
    h2 = train_hash(cfg)
    assert h2 not in {h0, h1}
    _write(anchors, b"anchors k=50", 3)
    _write(caps, b"captions v1", 3)
    assert train_hash(cfg) == h0, "same content, same run (mtime alone does not matter)"


def test_unused_inputs_and_logging_fields_do_not_change_the_hash(tmp_path: Path) -> None:
    caps = tmp_path / "captions.parquet"
    _write(caps, b"captions v1", 1)
    _write(tmp_path / "anchors" / "anchors.parquet", b"anchors", 1)
    no_cap = _cfg(tmp_path, lambda_cap=0.0)
    h = train_hash(no_cap)
    _write(caps, b"captions v2", 2)
    assert train_hash(no_cap) == h, "captions are not read when lambda_cap = 0"
    moved = _cfg(tmp_path, lambda_cap=0.0, out_dir=str(tmp_path / "elsewhere"), log_every=7, progress=False)
    assert train_hash(moved) == h
    assert train_hash(_cfg(tmp_path, lambda_cap=0.0, lr=3e-4)) != h


def test_a_run_folder_moved_elsewhere_holds_the_same_runs(tmp_path: Path) -> None:
    # `arf demo` keeps captions, anchors and the wise-probe's interpolated models inside its run folder: moved or
    # copied whole, its runs are the same runs (content is hashed, not where it lies).
    def at(folder: Path) -> TrainConfig:
        _write(folder / "captions.parquet", b"captions v1", 1)
        _write(folder / "anchors" / "anchors.parquet", b"anchors k=50", 1)
        return _cfg(folder, model=str(folder / "runs" / "wise" / "alpha_0.5"))

    here, there = at(tmp_path / "here"), at(tmp_path / "there")
    assert train_hash(here) == train_hash(there)
    _write(tmp_path / "there" / "anchors" / "anchors.parquet", b"anchors k=8 ", 2)
    assert train_hash(here) != train_hash(there), "other content is still another run"
    # A model outside the run folder is still named by its path.
    assert train_hash(_cfg(tmp_path / "here", model="/models/a")) != train_hash(_cfg(tmp_path / "here",
                                                                                         model="/models/b"))


def test_runs_recorded_under_the_hash_before_relocation_are_still_the_same_run(tmp_path: Path) -> None:
    _write(tmp_path / "captions.parquet", b"captions v1", 1)
    _write(tmp_path / "anchors" / "anchors.parquet", b"anchors", 1)
    cfg = _cfg(tmp_path)
    current, legacy = train_hashes(cfg)
    assert current == train_hash(cfg) and legacy != current
    assert same_run(current, cfg) and same_run(legacy, cfg)
    assert not same_run(None, cfg) and not same_run(train_hash(_cfg(tmp_path, lr=3e-4)), cfg)
    # The legacy hash held the paths as given: the same content elsewhere is not its run.
    moved = _cfg(tmp_path, captions=str(tmp_path / "other" / "captions.parquet"))
    _write(tmp_path / "other" / "captions.parquet", b"captions v1", 1)
    assert train_hash(moved) == current and train_hashes(moved)[1] != legacy


def test_a_model_id_is_not_a_path_whatever_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "runs"
    (out / "sub").mkdir(parents=True)
    cfg = _cfg(tmp_path, lambda_cap=0.0, lambda_ret=0.0, out_dir=str(out))
    monkeypatch.chdir(out / "sub")  # "arf:tiny-clip" resolved as a path would lie inside out_dir here
    inside = train_hash(cfg)
    monkeypatch.chdir(tmp_path)
    assert train_hash(cfg) == inside
