"""Shared by the kill -9 tests: SIGKILL a running CLI subprocess at the moment its output shows progress."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], *, what: str, timeout: float = 120,
                 poll: float = 0.002) -> None:
    """Wait until ``ready()`` (e.g. a first checkpoint or shard exists), then kill -9 ``proc`` and reap it.

    Fails, with the process output, if it exits on its own first or ``what`` never appears within ``timeout`` s.
    """
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline, f"{what} never appeared"
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
