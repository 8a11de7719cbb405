"""`thermoflow run`: every pipeline component as a supervised child process.

Each instance runs as ``python -m thermoflow <command>`` with the same environment (so the
same ``THERMOFLOW_*`` settings) plus ``THERMOFLOW_INSTANCE``; its output lines are
prefixed with its name; a crash is restarted after an exponential backoff; SIGINT or
SIGTERM stops them all with SIGTERM (SIGKILL after a grace period) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from thermoflow.logs import get_logger
from thermoflow.supervise import Instance, RestartPolicy

log = get_logger(__name__)


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
    out: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _states: dict[str, _State] = field(default_factory=dict)

    async def run(self) -> int:
        """Run until stopped; returns the exit code for `thermoflow run` (0 on a clean stop)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            await asyncio.gather(*(self._keep_running(instance) for instance in self.instances))
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return 0

    async def _keep_running(self, instance: Instance) -> None:
        state = self._states.setdefault(instance.name, _State())
        while not self.stop.is_set():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self.command, *instance.args,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env={**self.env, "THERMOFLOW_INSTANCE": str(instance.index)},
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop them in order
            )  # fmt: skip
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
            await pump
            code = await waiter
            state.last_exit, state.pid = code, None
            if self.stop.is_set():
                break
            ran_for = time.monotonic() - started
            state.failures = self.policy.failures_after(previous=state.failures, ran_for=ran_for)
            state.restarts += 1
            state.state = "restarting"
            self._write_status()
            delay = self.policy.delay(state.failures)
            log.warning(
                "exited", instance=instance.name, code=code, ran_for=round(ran_for, 1), restart_in=delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
        state.state = "stopped"  # also when stopped while waiting to restart
        self._write_status()

    async def _terminate(self, name: str, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.grace)
        except TimeoutError:
            log.warning("killed_after_grace", instance=name, grace=self.grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

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
