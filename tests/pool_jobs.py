"""Jobs for the process-pool tests: module-level, so that spawned workers can import them."""

from __future__ import annotations

import signal
import time


def stubborn(seconds: float) -> float:
    """A job that ignores SIGTERM (as a job whose unwinding was swallowed would) and sleeps."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)
    return seconds
