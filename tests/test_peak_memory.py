"""arf.peak_memory: each stretch's own peak RSS (reset between stretches on Linux), and the fallback elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from arf.demo import StageTimer
from arf.peak_memory import Peak, PeakMeter, format_bytes

MB = 1024**2
linux_only = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's clear_refs")


def _touch(n_mb: int) -> None:
    a = np.ones(n_mb * MB, dtype=np.uint8)  # written, so every page is resident
    assert int(a[:: 4096].sum()) == a.size // 4096
    del a


@linux_only
def test_each_stretch_has_its_own_peak() -> None:
    meter = PeakMeter()
    meter.start()
    _touch(300)
    big = meter.stop()
    meter.start()
    small = meter.stop()  # nothing allocated: the 300 MB of the first stretch must not show here
    assert not big.since_start and not small.since_start
    assert big.rss_bytes is not None and small.rss_bytes is not None
    assert big.rss_bytes - small.rss_bytes > 250 * MB


def test_without_a_reset_the_peak_is_the_process_lifetime_one(tmp_path: Path) -> None:
    _touch(200)
    meter = PeakMeter(clear_refs=tmp_path / "missing" / "clear_refs")  # the write fails, as on other OSes
    meter.start()
    peak = meter.stop()
    assert peak.since_start and peak.rss_bytes is not None and peak.rss_bytes > 200 * MB
    assert peak.cuda_bytes is None or "torch" in sys.modules


@linux_only
def test_stage_timer_keeps_the_larger_peak_of_a_stage_entered_twice() -> None:
    timer = StageTimer()
    with timer.stage("train"):
        _touch(300)
    with timer.stage("report"):
        pass
    first = timer.peaks["train"].rss_bytes
    with timer.stage("train"):
        pass
    assert timer.peaks["train"].rss_bytes == first
    mem = timer.memory()
    assert set(mem) == {"train", "report"} and mem["train"]["rss_mb"] - mem["report"]["rss_mb"] > 250
    assert mem["train"]["since_start"] is False and mem["train"]["cuda_mb"] is None


def test_memory_summary_and_units() -> None:
    timer = StageTimer(peaks={"data": Peak(3 * 1024**3, None, False), "train": Peak(800 * MB, 2 * 1024**3, True)})
    assert timer.memory_summary() == ("data 3.0 GB, train 800 MB (CUDA 2.0 GB) "
                                      "(each since start-up: this OS cannot reset the peak)")
    assert format_bytes(None) == "?" and format_bytes(5 * MB) == "5 MB"
