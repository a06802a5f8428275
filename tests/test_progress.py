"""arf.progress: frequent redraws on a terminal, one a minute into a log file, tqdm's own setting first."""

from __future__ import annotations

import io

import pytest

from arf import progress
from arf.progress import LOG_INTERVAL_S, progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _interval(monkeypatch: pytest.MonkeyPatch, stderr: io.StringIO) -> float:
    monkeypatch.setattr(progress.sys, "stderr", stderr)
    bar = progress_bar(range(3), file=stderr)
    try:
        return bar.mininterval
    finally:
        bar.close()


def test_log_files_get_sparse_redraws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    assert _interval(monkeypatch, io.StringIO()) == LOG_INTERVAL_S


def test_terminals_keep_tqdm_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    assert _interval(monkeypatch, _Tty()) == 0.1


def test_tqdm_environment_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    # tqdm applies TQDM_MININTERVAL only where the call passes no mininterval: the helper must then pass none.
    import tqdm

    seen = {}
    monkeypatch.setattr(tqdm, "tqdm", lambda iterable=None, **kw: seen.update(kw))
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    monkeypatch.setenv("TQDM_MININTERVAL", "5")
    progress_bar(range(3))
    assert "mininterval" not in seen
    monkeypatch.delenv("TQDM_MININTERVAL")
    progress_bar(range(3))
    assert seen["mininterval"] == LOG_INTERVAL_S


def test_disabled_bar_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", out)
    for _ in progress_bar(range(3), enabled=False, file=out):
        pass
    assert out.getvalue() == ""


def test_closed_or_replaced_stream_counts_as_log() -> None:
    closed = io.StringIO()
    closed.close()
    assert not progress._is_terminal(closed)
    assert not progress._is_terminal(object())


def test_the_stream_written_to_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bar drawn on a terminal given as ``file`` redraws often even when stderr goes to a log.
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    bar = progress_bar(range(3), file=_Tty())
    try:
        assert bar.mininterval == 0.1
    finally:
        bar.close()
