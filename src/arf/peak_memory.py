"""Peak memory of a stretch of work (a demo stage): this process's resident set and, when used, CUDA memory.

The process's peak resident set (Linux's ``VmHWM``, ``getrusage``'s ``ru_maxrss``) only ever rises, so it gives a
stage's own peak exactly when the stage sets a new one. For a stage that stays below an earlier stage's peak, a
daemon thread samples the resident set (``/proc/self/statm``) every ``interval`` seconds while the stage runs; that
maximum is a lower bound (a spike shorter than the interval can slip between samples) and is marked ``sampled``.
The peak is never reset (Linux would allow it through ``/proc/self/clear_refs``), because that also lowers what
``/usr/bin/time`` and ``getrusage`` report for the whole run. Without ``/proc`` (macOS) there is no sampling:
a stage that sets no new peak has ``rss_bytes`` None. Child processes (DataLoader workers) are not counted.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

_STATM = Path("/proc/self/statm")


@dataclass
class Peak:
    rss_bytes: int | None        # peak resident set of this process over the stretch (None: unknown here)
    cuda_bytes: int | None       # peak CUDA memory allocated by torch (None: CUDA not initialised)
    sampled: bool                # below an earlier peak: the maximum of the samples, a lower bound


def lifetime_peak_rss() -> int:
    """This process's peak resident set since start-up, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


def current_rss(statm: Path = _STATM) -> int | None:
    try:
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _cuda_ready() -> bool:
    torch = sys.modules.get("torch")  # never import torch (or start CUDA) just to measure
    return torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()


class PeakMeter:
    """``start()`` before the work, ``stop()`` after it: the peaks in between."""

    def __init__(self, interval: float = 0.02, statm: Path = _STATM) -> None:
        self.interval, self._statm = interval, statm
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_max: int | None = None
        self._lifetime0 = 0

    def _sample(self) -> None:
        while True:
            rss = current_rss(self._statm)
            if rss is not None and (self._sampled_max is None or rss > self._sampled_max):
                self._sampled_max = rss
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self._lifetime0 = lifetime_peak_rss()
        self._sampled_max = None
        self._stop.clear()
        if current_rss(self._statm) is not None:
            self._thread = threading.Thread(target=self._sample, name="arf-peak-rss", daemon=True)
            self._thread.start()
        if _cuda_ready():
            import torch

            torch.cuda.reset_peak_memory_stats()

    def stop(self) -> Peak:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        cuda = None
        if _cuda_ready():
            import torch

            cuda = int(torch.cuda.max_memory_allocated())
        lifetime = lifetime_peak_rss()
        if lifetime > self._lifetime0:  # this stretch set the process's peak: exact
            return Peak(rss_bytes=lifetime, cuda_bytes=cuda, sampled=False)
        return Peak(rss_bytes=self._sampled_max, cuda_bytes=cuda, sampled=self._sampled_max is not None)


def format_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 else f"{n / 1024**2:.0f} MB"
