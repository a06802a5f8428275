"""Peak memory of a stretch of work (a demo stage): this process's resident set and, when used, CUDA memory.

Linux keeps the process's peak resident set (``VmHWM`` in ``/proc/self/status``) and lets the process reset it by
writing ``5`` to ``/proc/self/clear_refs``; so each stage's peak is its own, not the largest since start-up (what
``getrusage`` or ``/usr/bin/time`` report). Where the reset is refused (another OS, a locked-down ``/proc``) the
peak is the process's since start-up and says so (``since_start``). Child processes (DataLoader workers) are not
counted: the stages run in this process.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Peak:
    rss_bytes: int | None        # peak resident set of this process over the stretch (None: unknown here)
    cuda_bytes: int | None       # peak CUDA memory allocated by torch (None: CUDA not initialised)
    since_start: bool            # the RSS peak could not be reset: it is the process's peak since start-up


def _vm_hwm(status: Path = _STATUS) -> int | None:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _lifetime_peak() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


def _cuda_ready() -> bool:
    torch = sys.modules.get("torch")  # never import torch (or start CUDA) just to measure
    return torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()


class PeakMeter:
    """``start()`` before the work, ``stop()`` after it: the peaks in between."""

    def __init__(self, clear_refs: Path = _CLEAR_REFS, status: Path = _STATUS) -> None:
        self._clear_refs, self._status = clear_refs, status
        self._reset = False

    def start(self) -> None:
        try:
            self._clear_refs.write_text("5")
            self._reset = _vm_hwm(self._status) is not None
        except OSError:
            self._reset = False
        if _cuda_ready():
            import torch

            torch.cuda.reset_peak_memory_stats()

    def stop(self) -> Peak:
        rss = _vm_hwm(self._status) if self._reset else None
        cuda = None
        if _cuda_ready():
            import torch

            cuda = int(torch.cuda.max_memory_allocated())
        if rss is None:
            return Peak(rss_bytes=_lifetime_peak(), cuda_bytes=cuda, since_start=True)
        return Peak(rss_bytes=rss, cuda_bytes=cuda, since_start=False)


def format_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 else f"{n / 1024**2:.0f} MB"
