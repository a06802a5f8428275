"""train_hash: what makes two runs the same run (cached finals in the demo, `--resume latest`)."""

from __future__ import annotations

import os
from pathlib import Path

from arf.train.config import TrainConfig
from arf.train.loop import train_hash


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
