"""Child processes the stack owns: started in their own session, tracked by pid files."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from thermoflow.errors import ServiceError as ServiceError  # raised here, defined in core


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is not alive: reap it if we can.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return _state(pid) not in ("Z", "X")


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat.rpartition(")")[2].split()[0]


#: Linux's largest possible pid (``/proc/sys/kernel/pid_max`` is at most 2**22 on 64-bit).
PID_MAX: Final = 1 << 22


def read_pid(pid_file: Path, *, command_has: str) -> int | None:
    """The pid in ``pid_file`` if that process still runs ``command_has`` in its command line.

    Anything else in the file is no pid: 0 and negative numbers name process groups to
    ``kill`` and ``waitpid`` (a stray reap of a child of ours), and a number past ``PID_MAX``
    overflows ``kill``. A file left by a server that died before a reboot may hold the pid of
    any process now: ``command_has`` (the service's own config or data path) tells ours apart,
    so `stack up` does not take it for the server and `stack down` does not signal it.
    """
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not (0 < pid <= PID_MAX and pid_alive(pid)):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:  # no /proc, or one that hides the process: the live pid is all there is
        return pid
    return pid if os.fsencode(command_has) in command else None


def spawn(
    argv: Sequence[str],
    *,
    pid_file: Path,
    log_file: Path,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` as a daemon in its own session, output to ``log_file``; returns its pid.

    A short-lived shell starts it in the background and exits, so the service is no child
    of ours: it outlives this process, and stopping it leaves no zombie here.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    launcher = subprocess.run(
        [
            "sh",
            "-c",
            # Room for a load test's thousands of connections, where the system allows it.
            'ulimit -n 65536 2>/dev/null; log="$1"; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!',
            "sh",
            str(log_file),
            *argv,
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        start_new_session=True,
        check=True,
    )
    pid = int(launcher.stdout.split()[0])
    pid_file.write_text(f"{pid}\n")
    return pid


def terminate(pid: int, *, timeout: float) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(pid)
            if group == os.getpgrp():  # never signal our own group
                os.kill(pid, sig)
            else:
                os.killpg(group, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.1)
    raise ServiceError(f"process {pid} did not stop")


def run(argv: Sequence[str], *, what: str, timeout: float = 600, **kwargs: Any) -> str:
    """Run a set-up command to completion; its output becomes the error when it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except FileNotFoundError as exc:
        raise ServiceError(f"{what}: {exc.filename} not found") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-2000:]
        raise ServiceError(f"{what} failed (exit {done.returncode}):\n{output}")
    return str(done.stdout)


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    pid: int | None = None,
    log_file: Path | None = None,
) -> None:
    """Poll ``check()`` until it returns True; raise ServiceError naming ``what`` on timeout.

    With ``pid``, a process that exits stops the wait at once; with ``log_file``, the error
    ends with the log's last lines, so a service that fails to start says why.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = exc
        if pid is not None and not pid_alive(pid):
            raise ServiceError(f"{what} exited while starting{_log_tail(log_file)}")
        time.sleep(interval)
    raise ServiceError(
        f"{what} did not become ready within {timeout:.0f}s (last error: {last}){_log_tail(log_file)}"
    )


def _log_tail(log_file: Path | None, lines: int = 20) -> str:
    if log_file is None:
        return ""
    try:
        tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "; its log ends:\n" + "\n".join(tail) if tail else ""
