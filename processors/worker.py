"""Running `thermoflow process`: one faust worker in this process, or N worker processes.

With ``--workers N`` (N > 1) this process supervises N children (``python -m thermoflow
process --worker-index i``) that join the same consumer group and share the partitions; each
gets its own faust data directory and (when the web views are on) its own port. SIGTERM,
SIGINT or SIGHUP is passed on; each worker stops its agents, commits what it has sent, and
exits 0, within ``shutdown_grace`` as every component does (:mod:`thermoflow.component`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import faust

from thermoflow import kafka
from thermoflow.component import EXIT_STOP_TIMEOUT, STOP_SIGNALS, run_until_signal
from thermoflow.errors import ServiceError
from thermoflow.http import component_health, serve
from thermoflow.kafka import DEFAULT_PARTITIONS
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.processors.app import build_app, flush_state
from thermoflow.processors.batching import check_versions
from thermoflow.processors.runtime import import_functions, registry
from thermoflow.processors.settings import ProcessorSettings

log = get_logger(__name__)

#: Seconds a supervisor waits beyond the workers' own shutdown grace before it kills them.
KILL_MARGIN = 5.0


def worker_slot(settings: ProcessorSettings, worker_index: int) -> int:
    """A number unique among the workers of all `thermoflow process` instances on this machine."""
    return settings.instance * settings.workers + worker_index


def prepare(settings: ProcessorSettings) -> None:
    """Check faust's version, that Kafka answers and the topics exist (creating missing ones),
    before any worker starts."""
    check_versions()
    import_functions(settings.function_modules)

    async def check() -> None:
        try:
            await kafka.wait_for_kafka(settings, timeout=30.0)
        except TimeoutError as exc:
            raise ServiceError(str(exc)) from None
        names = {settings.deadletter_topic}
        for spec in registry.specs():
            names |= {spec.source_topic(settings), spec.sink_topic(settings)}
        await kafka.ensure_topics(settings, {name: DEFAULT_PARTITIONS.get(name, 6) for name in sorted(names)})
        await ensure_state_topic(settings)

    asyncio.run(check())


async def ensure_state_topic(settings: ProcessorSettings) -> list[str]:
    """Create the detectors' state topic if missing: compacted, with as many partitions as the
    readings (it is keyed alike). Returns ``[its name]`` when it was created here, else ``[]``.

    Fewer partitions than the readings would put two readings partitions' state in one: that
    fails here, naming both counts, rather than mixing states later.
    """
    readings = (await kafka.partition_counts(settings, [settings.readings_topic]))[settings.readings_topic]
    created = await kafka.ensure_topics(
        settings,
        {settings.state_topic: readings},
        configs={settings.state_topic: {"cleanup.policy": "compact", "segment.ms": "600000"}},
    )
    state = (await kafka.partition_counts(settings, [settings.state_topic]))[settings.state_topic]
    if state != readings:
        raise ServiceError(
            f"the detector state topic {settings.state_topic!r} has {state} partitions but "
            f"{settings.readings_topic!r} has {readings}: they must match"
            " (delete the state topic to rebuild it)"
        )
    return created


class _Worker(faust.Worker):
    """faust's worker without its own signal handlers: :func:`thermoflow.component.run_until_signal`
    handles SIGTERM, SIGINT and SIGHUP for it, with the shutdown grace every component has."""

    def install_signal_handlers(self) -> None:
        """Nothing: the stop signals are the StopGuard's (mode would take SIGTERM and SIGINT only)."""


def run_worker(settings: ProcessorSettings, *, worker_index: int, parent_pid: int | None = None) -> int:
    """Run one faust worker until SIGTERM, SIGINT or SIGHUP; returns the exit code.

    A stop signal stops the agents, commits what has been sent and returns 0. A worker that
    has not stopped within ``shutdown_grace`` seconds exits with code 4
    (:data:`thermoflow.component.EXIT_STOP_TIMEOUT`), a second signal ends it at once: what it
    had not committed is read again by the next owner of its partitions.

    A worker started by ``--workers N`` passes its supervisor's ``parent_pid``: should the
    supervisor die without passing a signal on (SIGKILL), the worker stops itself.
    """
    check_versions()
    import_functions(settings.function_modules)
    slot = worker_slot(settings, worker_index)
    if settings.data_dir is not None:
        data_dir = settings.data_dir / f"worker-{slot}"
        data_dir.mkdir(parents=True, exist_ok=True)
        cleanup = False
    else:
        data_dir = Path(tempfile.mkdtemp(prefix=f"thermoflow-processors-{slot}-"))
        cleanup = True
    codes: list[int] = []

    async def main(stop: asyncio.Event) -> None:
        metrics = Metrics("processors")
        # Each worker of this `process` its own port; its stall watchdogs end the process themselves.
        port = settings.http_port + worker_index if settings.http_port else None
        async with serve(port, metrics, component_health(settings, None)):
            codes.append(
                await _serve(
                    settings, stop=stop, slot=slot, data_dir=data_dir, parent_pid=parent_pid, metrics=metrics
                )
            )

    try:
        run_until_signal(main, grace=settings.shutdown_grace)
    finally:
        if cleanup:
            shutil.rmtree(data_dir, ignore_errors=True)
    code = codes[0] if codes else 1
    log.info("worker_stopped", worker=slot, exit_code=code)
    return code


async def _serve(
    settings: ProcessorSettings,
    *,
    stop: asyncio.Event,
    slot: int,
    data_dir: Path,
    parent_pid: int | None,
    metrics: Metrics,
) -> int:
    """Run the faust worker until ``stop`` is set or it crashes; 0 after a clean stop, else 1."""
    app = build_app(settings, registry=registry, worker_index=slot, data_dir=data_dir, metrics=metrics)
    worker = _Worker(
        app,
        loop=asyncio.get_running_loop(),
        loglevel=settings.log_level,
        quiet=True,
        override_logging=False,
        redirect_stdouts=False,
    )
    worker.spinner = None  # faust's terminal spinner would write escape codes into the log stream
    if parent_pid is not None:

        @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
        async def watch_parent() -> None:
            if os.getppid() != parent_pid:
                log.warning("supervisor_gone", parent_pid=parent_pid)
                stop.set()

    log.info(
        "worker_starting",
        group=settings.processor_group,
        worker=slot,
        functions=[spec.name for spec in registry.specs()],
        rules=str(settings.rules_path),
        data_dir=str(data_dir),
    )
    # A daemon worker's start() returns once it is stopped or has crashed.
    running = asyncio.ensure_future(worker.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if stop.is_set() and not running.done():
            await _flush_state(app, timeout=settings.shutdown_grace / 2)
        await worker.stop()
        if not running.done():
            running.cancel()
        await asyncio.wait({running})
    failure = app.crash_reason or worker.crash_reason
    if failure is None and not running.cancelled():
        failure = running.exception()
    if failure is not None:
        log.error("worker_crashed", reason=repr(failure))
        return 1
    return 0


async def _flush_state(app: faust.App, *, timeout: float) -> None:
    """Write the detectors' state and commit what it covers before stopping; if that fails (or
    takes half the shutdown grace), the next owner replays from the last commit: the stop goes on."""
    try:
        await asyncio.wait_for(flush_state(app), timeout=timeout)
    except Exception as exc:  # noqa: BLE001  # Kafka unreachable, say: a replay, not a failed stop
        log.warning("state_flush_on_stop_failed", error=repr(exc))


def run_workers(settings: ProcessorSettings, *, env: dict[str, str]) -> int:
    """Supervise ``settings.workers`` worker processes until SIGTERM, SIGINT, SIGHUP or one of them fails.

    The signal is passed on as SIGTERM: each worker stops within its ``shutdown_grace``. A
    worker still running a few seconds after that is killed, and the exit code is then 4 (as
    for a worker that gave up on its own stop).
    """
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        for index in range(settings.workers):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "thermoflow", "process", "--worker-index", str(index)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # a terminal's Ctrl-C reaches us only: we pass it on once
                )
            )
        log.info("workers_started", workers=len(children), pids=[child.pid for child in children])
        failed = 0
        while not stopping:
            exited = [child for child in children if child.poll() is not None]
            if exited:
                failed = next((child.returncode for child in exited if child.returncode != 0), 0)
                log.error("worker_exited", pid=exited[0].pid, exit_code=exited[0].returncode)
                failed = failed or 1
                break
            time.sleep(0.2)
        return _stop_children(children, grace=settings.shutdown_grace + KILL_MARGIN) or failed
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_children(children: list[subprocess.Popen[bytes]], *, grace: float) -> int:
    """SIGTERM to each child still running; 0 once all stopped cleanly, 4 if one was stuck, else 1."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    code = 0
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker_killed", pid=child.pid, after_s=grace)
            child.kill()
            child.wait()
            code = EXIT_STOP_TIMEOUT
        if child.returncode == EXIT_STOP_TIMEOUT:
            code = EXIT_STOP_TIMEOUT
        elif child.returncode not in (0, -signal.SIGTERM):
            code = code or 1
    return code


def child_env(**given: str) -> dict[str, str]:
    """The environment for worker processes: ours plus the flags this process was given."""
    env = dict(os.environ)
    env.update({f"THERMOFLOW_{name.upper()}": value for name, value in given.items()})
    return env
