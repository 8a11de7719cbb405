"""What the benchmarks share: CPU time of processes from ``/proc``, and a previous revision's tree.

Wall-clock rates on a shared machine swing by 2x between runs; the CPU a process spends per
reading hardly moves, so every benchmark prints CPU-seconds per 1,000 readings beside its rate.
A benchmark that compares with earlier code runs that code's tree (:func:`checkout`) in the
same run.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
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


def checkout(revision: str, *, root: Path) -> Path:
    """``revision``'s tree of the repository at ``root``, in a new temporary folder (``git archive``)."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{revision[:12]}-"))
    archive = subprocess.run(["git", "archive", revision], cwd=root, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder
