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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import aiohttp

from thermoflow import autoscale
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


class LagSource(Protocol):
    """Where the autoscaler reads a consumer group's lag (:class:`thermoflow.lag.GroupLag`)."""

    async def lag(self, group: str, topic: str) -> int: ...


@dataclass(frozen=True)
class Autoscaled:
    """A component `thermoflow run --autoscale` scales: its policy and the lag it watches."""

    policy: autoscale.ScalePolicy
    group: str
    topic: str


@dataclass(frozen=True)
class HealthPolicy:
    """When an instance whose ``/healthz`` does not answer 200 is killed and restarted.

    ``timeout`` seconds of failing answers (or none) once it has answered, ``startup`` seconds
    before its first good answer; 0 disables the checks.
    """

    timeout: float = 0.0
    startup: float = 120.0
    interval: float = 2.0
    request_timeout: float = 3.0


@dataclass
class _State:
    pid: int | None = None
    restarts: int = 0
    failures: int = 0
    state: str = "starting"
    last_exit: int | None = None
    last_reason: str | None = None
    #: What its /healthz said last: "ok", "failing", or None before its first answer.
    health: str | None = None


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
    #: Components whose instance count follows their lag (``instances`` holds up to their maximum).
    autoscaled: Mapping[str, Autoscaled] = field(default_factory=dict)
    lag_source: LagSource | None = None
    health: HealthPolicy = field(default_factory=HealthPolicy)
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _State] = field(default_factory=dict)
    _children: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _retire: dict[str, asyncio.Event] = field(default_factory=dict)
    _scale: dict[str, autoscale.ScaleState] = field(default_factory=dict)
    _lag: dict[str, int | None] = field(default_factory=dict)
    _failed: list[BaseException] = field(default_factory=list)

    async def run(self) -> int:
        """Run until stopped; returns the exit code for `thermoflow run` (0 on a clean stop).

        It returns only once every child has ended: whatever happens here (a signal, an
        error, a cancellation), what still runs is killed and waited for.
        """
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        scaler: asyncio.Task[None] | None = None
        try:
            for component, scaled in self.autoscaled.items():
                self._scale[component] = autoscale.ScaleState(replicas=scaled.policy.min_replicas)
            for instance in self.instances:
                if self._wanted(instance):
                    self._launch(instance)
            if self.autoscaled:
                scaler = asyncio.create_task(self._autoscale())
                scaler.add_done_callback(self._on_task_done)
            await self.stop.wait()
            while self._tasks:  # each ends once its child has stopped
                await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
                self._tasks = {name: task for name, task in self._tasks.items() if not task.done()}
            if self._failed:
                raise self._failed[0]
        finally:
            self.stop.set()  # on an error too: no instance restarts any more
            if scaler is not None:
                scaler.cancel()
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            await asyncio.shield(self._kill_the_rest())
        return 0

    def _wanted(self, instance: Instance) -> bool:
        """Whether ``instance`` is among those its component should run now."""
        state = self._scale.get(instance.component)
        return state is None or instance.index <= state.replicas

    def _launch(self, instance: Instance) -> None:
        """Start supervising ``instance``, after its previous run (if it is still retiring) ended."""
        previous = self._tasks.get(instance.name)
        retire = self._retire[instance.name] = asyncio.Event()
        task = asyncio.create_task(self._keep_running(instance, retire=retire, after=previous))
        task.add_done_callback(self._on_task_done)
        self._tasks[instance.name] = task

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failed.append(task.exception())  # type: ignore[arg-type]
            self.stop.set()

    async def _autoscale(self) -> None:
        """Poll each autoscaled component's lag and start or retire instances as the policy says."""
        interval = min(scaled.policy.polling_interval for scaled in self.autoscaled.values())
        while not self.stop.is_set():
            for component, scaled in self.autoscaled.items():
                await self._scale_one(component, scaled)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), interval)

    async def _scale_one(self, component: str, scaled: Autoscaled) -> None:
        assert self.lag_source is not None
        try:
            lag = await self.lag_source.lag(scaled.group, scaled.topic)
        except Exception as exc:  # noqa: BLE001 - Kafka away, or a client bug: keep what runs, say why
            log.warning("autoscale_lag_unknown", component=component, group=scaled.group, error=repr(exc))
            self._lag[component] = None
            return
        before = self._scale[component]
        after = autoscale.decide(scaled.policy, before, lag=lag, now=self.clock())
        self._scale[component], self._lag[component] = after, lag
        if after.replicas != before.replicas:
            log.info(
                "autoscaled", component=component, lag=lag, replicas=after.replicas,
                was=before.replicas, reason=after.reason, group=scaled.group,
            )  # fmt: skip
        for instance in self.instances:
            if instance.component != component or self.stop.is_set():
                continue
            running = instance.name in self._tasks and not self._retire[instance.name].is_set()
            if self._wanted(instance) and not running:
                self._launch(instance)
            elif not self._wanted(instance) and running:
                self._retire[instance.name].set()
        self._write_status()

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

    async def _keep_running(
        self, instance: Instance, *, retire: asyncio.Event, after: asyncio.Task[None] | None = None
    ) -> None:
        if after is not None:
            with contextlib.suppress(Exception):
                await after
        state = self._states.setdefault(instance.name, _State())
        while not self.stop.is_set() and not retire.is_set():
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
            state.pid, state.state, state.health = proc.pid, "running", None
            self._write_status()
            log.info("started", instance=instance.name, pid=proc.pid)
            pump = asyncio.create_task(self._pump(instance.name, proc))
            waiter = asyncio.create_task(proc.wait())
            stopper = asyncio.create_task(self.stop.wait())
            retirer = asyncio.create_task(retire.wait())
            checker = asyncio.create_task(self._check_health(instance, proc))
            await asyncio.wait({waiter, stopper, retirer}, return_when=asyncio.FIRST_COMPLETED)
            checker.cancel()
            if not waiter.done():
                await self._terminate(instance.name, proc)
            stopper.cancel()
            retirer.cancel()
            code = await waiter
            _kill_group(proc.pid)  # what it left behind in its session, which would hold its output open
            await pump
            unhealthy = (
                checker.done()
                and not checker.cancelled()
                and checker.exception() is None
                and checker.result()
            )
            state.last_exit, state.pid = code, None
            state.last_reason = "unhealthy" if unhealthy else exit_reason(code)
            del self._children[instance.name]
            if self.stop.is_set():
                break
            if retire.is_set():
                state.state = "retired"
                self._write_status()
                log.info("retired", instance=instance.name, code=code)
                return
            ran_for = time.monotonic() - started
            state.failures = self.policy.failures_after(previous=state.failures, ran_for=ran_for)
            state.restarts += 1
            state.state = "restarting"
            self._write_status()
            delay = self.policy.delay(state.failures)
            log.warning(
                "exited", instance=instance.name, code=code, reason=state.last_reason,
                ran_for=round(ran_for, 1), restart_in=delay,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(self.stop, retire), delay)
        state.state = "retired" if retire.is_set() and not self.stop.is_set() else "stopped"
        self._write_status()

    async def _check_health(self, instance: Instance, proc: asyncio.subprocess.Process) -> bool:
        """Probe the instance's ``/healthz``; SIGKILL it once it has failed for too long.

        Returns True when it killed the instance (whose exit then reads ``unhealthy``); runs
        until cancelled otherwise. A hung loop (or a SIGSTOPped process) answers nothing, and
        its own watchdog cannot act: only the supervisor can restart it.
        """
        port = self.ports.get(instance.name)
        if not self.health.timeout or port is None:
            await asyncio.Event().wait()  # nothing to check: wait to be cancelled
            return False
        url = f"http://127.0.0.1:{port}/healthz"
        started = last_ok = self.clock()
        answered = failing = False
        timeout = aiohttp.ClientTimeout(total=self.health.request_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.sleep(self.health.interval)
                error = await _probe(session, url)
                now = self.clock()
                if error is None:
                    if failing and answered:
                        log.info("healthy_again", instance=instance.name, url=url)
                    answered, last_ok, failing = True, now, False
                    self._set_health(instance, "ok")
                    continue
                if answered and not failing:
                    log.warning("health_failing", instance=instance.name, url=url, error=error)
                    self._set_health(instance, "failing")
                failing = True
                limit = self.health.timeout if answered else max(self.health.startup, self.health.timeout)
                failing_for = now - (last_ok if answered else started)
                if failing_for > limit:
                    log.error(
                        "unhealthy", instance=instance.name, pid=proc.pid, url=url, error=error,
                        failing_for=round(failing_for, 1), limit=limit,
                    )  # fmt: skip
                    _kill_group(proc.pid)
                    return True

    def _set_health(self, instance: Instance, health: str) -> None:
        state = self._states[instance.name]
        if state.health != health:
            state.health = health
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
            "autoscale": {
                component: {
                    "replicas": state.replicas,
                    "lag": self._lag.get(component),
                    "reason": state.reason,
                }
                for component, state in self._scale.items()
            },
        }
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2))
        tmp.replace(self.status_file)


def _killed_by(checker: asyncio.Task[bool]) -> bool:
    """Whether the health check ended by killing its instance."""
    return checker.done() and not checker.cancelled() and checker.exception() is None and checker.result()


async def _first(*events: asyncio.Event) -> None:
    """Return once any of ``events`` is set."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _probe(session: aiohttp.ClientSession, url: str) -> str | None:
    """None when ``url`` answers 200; else what went wrong (a status, a timeout, a refusal)."""
    try:
        async with session.get(url) as response:
            return None if response.status == 200 else f"status {response.status}"
    except TimeoutError:
        return "no answer"
    except aiohttp.ClientError as exc:
        return repr(exc)


def _kill_group(pid: int) -> None:
    """SIGKILL a child's process group (its own session: the child and what it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
