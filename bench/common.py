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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thermoflow.stack import Stack

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


def server_pids(stack: Stack) -> dict[str, int]:
    """The local stack's servers: Mosquitto, Kafka, and PostgreSQL's postmaster with each backend
    (its children, ``postgres-<pid>``; a backend that has ended is not listed, nor its CPU)."""
    pids = {service.name: pid for service in stack.services if (pid := service.pid()) is not None}
    postmaster = pids.get("postgres")
    for stat in Path("/proc").glob("[0-9]*/stat") if postmaster is not None else ():
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone since the listing
            continue
        if parent == postmaster:
            pids[f"postgres-{stat.parent.name}"] = int(stat.parent.name)
    return pids


def children_cpu() -> float:
    """User + system CPU seconds of this process's children that have ended and been waited for."""
    times = os.times()
    return times.children_user + times.children_system


def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds each process spent between two readings of :func:`cpu_of` (present in both)."""
    return {name: after[name] - before[name] for name in before if name in after}


def checkout(revision: str, *, root: Path) -> Path:
    """``revision``'s tree of the repository at ``root``, in a new temporary folder (``git archive``)."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{revision[:12]}-"))
    archive = subprocess.run(["git", "archive", revision], cwd=root, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder
