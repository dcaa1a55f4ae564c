"""When this process started, for the start-up figure in metrics.json (`first_step_seconds`: from the
process's start to the end of its first training step, TensorFlow's import included)."""

from __future__ import annotations

import os
import time


def process_started_at() -> float | None:
    """The process's start as a Unix time (Linux: /proc), or None where that is not known."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])      # field 22: starttime, in clock ticks
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def since_start(moment: float | None = None) -> float | None:
    started = process_started_at()
    if started is None:
        return None
    return round((time.time() if moment is None else moment) - started, 3)
