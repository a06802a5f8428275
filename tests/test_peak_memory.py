"""arf.peak_memory: each stretch's own peak RSS — exact when it sets the process's peak, sampled below it — without
lowering the whole run's peak that /usr/bin/time and getrusage report."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from arf.demo import StageTimer
from arf.peak_memory import Peak, PeakMeter, current_rss, format_bytes, lifetime_peak_rss

MB = 1024**2
needs_proc = pytest.mark.skipif(current_rss() is None, reason="needs /proc/self/statm")


def _touch(n_mb: int, hold_s: float = 0.0) -> None:
    a = np.ones(n_mb * MB, dtype=np.uint8)  # written, so every page is resident
    if hold_s:
        threading.Event().wait(hold_s)  # long enough for the sampler to see it
    assert int(a[:: 4096].sum()) == a.size // 4096
    del a


def _above_lifetime_peak() -> int:
    """MB to allocate so that the allocation sets a new process peak."""
    return max(0, (lifetime_peak_rss() - (current_rss() or 0)) // MB) + 300


@needs_proc
def test_a_stretch_that_sets_the_process_peak_is_exact_and_the_run_peak_is_kept() -> None:
    meter = PeakMeter()
    meter.start()
    n = _above_lifetime_peak()
    _touch(n)
    big = meter.stop()
    assert not big.sampled and big.rss_bytes == lifetime_peak_rss()
    meter.start()
    small = meter.stop()  # nothing allocated: the first stretch's allocation must not show here
    assert small.sampled and small.rss_bytes is not None
    assert big.rss_bytes - small.rss_bytes > (n - 50) * MB
    assert lifetime_peak_rss() >= big.rss_bytes  # never reset: /usr/bin/time still sees the whole run's peak


@needs_proc
def test_a_stretch_below_an_earlier_peak_is_sampled() -> None:
    _touch(_above_lifetime_peak())  # an earlier peak well above what follows
    meter = PeakMeter(interval=0.005)
    meter.start()
    base = current_rss() or 0
    _touch(150, hold_s=0.2)
    peak = meter.stop()
    assert peak.sampled and peak.rss_bytes is not None and peak.rss_bytes - base > 120 * MB
    assert not any(t.name == "arf-peak-rss" for t in threading.enumerate())


def test_without_proc_a_stretch_below_the_peak_is_unknown(tmp_path: Path) -> None:
    _touch(_above_lifetime_peak() if current_rss() is not None else 300)
    meter = PeakMeter(statm=tmp_path / "missing")  # no /proc: no sampling
    meter.start()
    peak = meter.stop()
    assert peak.rss_bytes is None and not peak.sampled


@needs_proc
def test_stage_timer_keeps_the_larger_peak_of_a_stage_entered_twice() -> None:
    timer = StageTimer()
    with timer.stage("train"):
        _touch(_above_lifetime_peak())
    with timer.stage("report"):
        pass
    first = timer.peaks["train"]
    with timer.stage("train"):
        pass
    assert timer.peaks["train"] == first and not first.sampled
    mem = timer.memory()
    assert set(mem) == {"train", "report"} and mem["train"]["rss_mb"] - mem["report"]["rss_mb"] > 250
    assert mem["report"]["rss_sampled"] is True and mem["train"]["cuda_mb"] is None
    with pytest.raises(RuntimeError), timer.stage("broken"):
        raise RuntimeError("a failing stage")
    assert not any(t.name == "arf-peak-rss" for t in threading.enumerate())


def test_memory_summary_and_units() -> None:
    timer = StageTimer(peaks={"data": Peak(3 * 1024**3, None, False), "train": Peak(800 * MB, 2 * 1024**3, True)})
    assert timer.memory_summary() == "data 3.0 GB, train ≥ 800 MB, CUDA 2.0 GB"
    assert format_bytes(None) == "?" and format_bytes(5 * MB) == "5 MB"
