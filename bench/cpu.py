"""CPU time of processes, read from ``/proc``: the benchmarks' figure that moves least with load.

Wall-clock rates on a shared machine swing by 2x between runs; the CPU a process spends per
reading hardly moves, so every benchmark prints CPU-seconds per 1,000 readings beside its rate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14, 15


def cpu_of(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process; one that has exited is left out."""
    seconds: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            seconds[name] = cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return seconds


def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds each process spent between two readings of :func:`cpu_of` (present in both)."""
    return {name: after[name] - before[name] for name in before if name in after}
