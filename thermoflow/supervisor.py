"""`thermoflow run`: every pipeline component as a supervised child process.

Each instance runs as ``python -m thermoflow <command>`` with the same environment (so the
same ``THERMOFLOW_*`` settings) plus ``THERMOFLOW_INSTANCE``; its output lines are
prefixed with its name; a crash (or a stall, exit code 3) is restarted after an exponential
backoff; SIGTERM, SIGINT or SIGHUP stops them all with SIGTERM (SIGKILL after a grace period,
or at once on a second signal) and exits 0 once every child has ended. A child dies with
the supervisor even when that is SIGKILLed (Linux ``PR_SET_PDEATHSIG``), so nothing is left
running without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from thermoflow.component import STOP_SIGNALS
from thermoflow.logs import get_logger
from thermoflow.run_plan import Instance, RestartPolicy, exit_reason

log = get_logger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None  # loaded before any fork


def die_with_parent(sig: signal.Signals = signal.SIGKILL, *, parent: int | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent ends (Linux; elsewhere a no-op).

    Safe in a ``preexec_fn``: no allocation beyond the call. When the parent ended already
    (``parent`` given and no longer ours), the signal is sent now.
    """
    if _libc is None:
        return
    _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)


@dataclass
class _State:
    pid: int | None = None
    restarts: int = 0
    failures: int = 0
    state: str = "starting"
    last_exit: int | None = None


@dataclass
class Supervisor:
    instances: Sequence[Instance]
    env: Mapping[str, str]
    command: Sequence[str] = (sys.executable, "-m", "thermoflow")
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    grace: float = 30.0
    status_file: Path | None = None
    #: Each instance's THERMOFLOW_HTTP_PORT (:func:`thermoflow.run_plan.http_ports`); absent: env's.
    ports: Mapping[str, int] = field(default_factory=dict)
    out: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    kill_now: asyncio.Event = field(default_factory=asyncio.Event)
    _states: dict[str, _State] = field(default_factory=dict)
    _children: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def run(self) -> int:
        """Run until stopped; returns the exit code for `thermoflow run` (0 on a clean stop).

        It returns only once every child has ended: whatever happens here (a signal, an
        error, a cancellation), what still runs is killed and waited for.
        """
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await asyncio.gather(*(self._keep_running(instance) for instance in self.instances))
        finally:
            self.stop.set()  # on an error too: no instance restarts any more
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            await asyncio.shield(self._kill_the_rest())
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            log.warning("killing_now", signal=sig.name)
            self.kill_now.set()
            return
        log.info("stopping", signal=sig.name, grace=self.grace)
        self.stop.set()

    async def _kill_the_rest(self) -> None:
        for name, proc in list(self._children.items()):
            if proc.returncode is None:
                log.warning("killed_on_exit", instance=name, pid=proc.pid)
                _kill_group(proc.pid)
                await proc.wait()

    async def _keep_running(self, instance: Instance) -> None:
        state = self._states.setdefault(instance.name, _State())
        while not self.stop.is_set():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self.command, *instance.args,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env={**self.env, "THERMOFLOW_INSTANCE": str(instance.index), **self._port(instance)},
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop them in order
                preexec_fn=functools.partial(die_with_parent, parent=os.getpid()),
            )  # fmt: skip
            self._children[instance.name] = proc
            state.pid, state.state = proc.pid, "running"
            self._write_status()
            log.info("started", instance=instance.name, pid=proc.pid)
            pump = asyncio.create_task(self._pump(instance.name, proc))
            waiter = asyncio.create_task(proc.wait())
            stopper = asyncio.create_task(self.stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                await self._terminate(instance.name, proc)
            stopper.cancel()
            code = await waiter
            _kill_group(proc.pid)  # what it left behind in its session, which would hold its output open
            await pump
            state.last_exit, state.pid = code, None
            del self._children[instance.name]
            if self.stop.is_set():
                break
            ran_for = time.monotonic() - started
            state.failures = self.policy.failures_after(previous=state.failures, ran_for=ran_for)
            state.restarts += 1
            state.state = "restarting"
            self._write_status()
            delay = self.policy.delay(state.failures)
            log.warning(
                "exited", instance=instance.name, code=code, reason=exit_reason(code),
                ran_for=round(ran_for, 1), restart_in=delay,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
        state.state = "stopped"  # also when stopped while waiting to restart
        self._write_status()

    def _port(self, instance: Instance) -> dict[str, str]:
        port = self.ports.get(instance.name)
        return {} if port is None else {"THERMOFLOW_HTTP_PORT": str(port)}

    async def _terminate(self, name: str, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM, then SIGKILL of its process group after the grace period or a second signal."""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        ended = asyncio.ensure_future(proc.wait())
        hurry = asyncio.ensure_future(self.kill_now.wait())
        try:
            await asyncio.wait({ended, hurry}, timeout=self.grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
        if not ended.done():
            log.warning("killed_after_grace", instance=name, grace=self.grace, hurried=self.kill_now.is_set())
            _kill_group(proc.pid)
        await ended

    async def _pump(self, name: str, proc: asyncio.subprocess.Process) -> None:
        """Copy a child's output line by line, each prefixed with the instance name."""
        assert proc.stdout is not None
        prefix = f"{name:<12}| ".encode()
        while line := await proc.stdout.readline():
            self.out.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
            self.out.flush()

    def _write_status(self) -> None:
        if self.status_file is None:
            return
        body = {
            "updated_at": time.time(),
            "supervisor_pid": os.getpid(),
            "instances": {name: vars(state) for name, state in self._states.items()},
        }
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2))
        tmp.replace(self.status_file)


def _kill_group(pid: int) -> None:
    """SIGKILL a child's process group (its own session: the child and what it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
