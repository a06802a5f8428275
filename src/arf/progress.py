"""Progress bars: tqdm, redrawn every 0.1 s on a terminal but once a minute into a log file.

Long jobs (the full demo, pool embedding, training) usually run under nohup, Slurm or a CI runner, where every
redraw is another ``\\r``-separated copy of the bar in the log: the full protocol wrote ~1 MB of bars in its first
16 minutes. tqdm's own ``TQDM_MININTERVAL`` (and any other ``TQDM_*`` setting) still wins over this default.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

LOG_INTERVAL_S = 60.0  # seconds between redraws when stderr is not a terminal


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kw: Any) -> Any:
    """A ``tqdm`` bar (``disable`` when not ``enabled``); sparse redraws when the stream it writes to (``file``,
    default stderr) is not a terminal."""
    from tqdm import tqdm

    if not _is_terminal(kw.get("file") or sys.stderr) and "TQDM_MININTERVAL" not in os.environ:
        kw.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(iterable, disable=not enabled, **kw)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams (pytest's capture, a detached job)
        return False
