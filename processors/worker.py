"""Running `thermoflow process`: one faust worker in this process, or N worker processes.

With ``--workers N`` (N > 1) this process supervises N children (``python -m thermoflow
process --worker-index i``) that join the same consumer group and share the partitions; each
gets its own faust data directory and (when the web views are on) its own port. SIGTERM or
SIGINT is passed on; each worker stops its agents, commits what it has sent, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from processors.app import build_app
from processors.runtime import import_functions, registry
from processors.settings import ProcessorSettings
from thermoflow import kafka
from thermoflow.kafka import DEFAULT_PARTITIONS
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.service import tune_gc
from thermoflow.stack import ServiceError

log = get_logger(__name__)

STOP_GRACE = 30.0  # seconds a worker gets to stop after SIGTERM before it is killed


def worker_slot(settings: ProcessorSettings, worker_index: int) -> int:
    """A number unique among the workers of all `thermoflow process` instances on this machine."""
    return settings.instance * settings.workers + worker_index


def prepare(settings: ProcessorSettings) -> None:
    """Check Kafka answers and the topics exist (creating missing ones), before any worker starts."""
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

    asyncio.run(check())


def run_worker(settings: ProcessorSettings, *, worker_index: int, parent_pid: int | None = None) -> int:
    """Run one faust worker until SIGTERM/SIGINT; returns the exit code.

    A worker started by ``--workers N`` passes its supervisor's ``parent_pid``: should the
    supervisor die without passing a signal on (SIGKILL), the worker stops itself.
    """
    import_functions(settings.function_modules)
    slot = worker_slot(settings, worker_index)
    if settings.data_dir is not None:
        data_dir = settings.data_dir / f"worker-{slot}"
        data_dir.mkdir(parents=True, exist_ok=True)
        cleanup = False
    else:
        data_dir = Path(tempfile.mkdtemp(prefix=f"thermoflow-processors-{slot}-"))
        cleanup = True
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = build_app(
            settings, registry=registry, worker_index=slot, data_dir=data_dir, metrics=Metrics("processors")
        )
        worker = faust.Worker(
            app,
            loop=loop,
            loglevel=settings.log_level,
            quiet=True,
            override_logging=False,
            redirect_stdouts=False,
        )
        worker.spinner = None  # faust's terminal spinner would write escape codes into the log stream
        tune_gc()
        if parent_pid is not None:

            @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
            async def watch_parent() -> None:
                if os.getppid() != parent_pid:
                    log.warning("supervisor_gone", parent_pid=parent_pid)
                    os.kill(os.getpid(), signal.SIGTERM)

        log.info(
            "worker_starting",
            group=settings.processor_group,
            worker=slot,
            functions=[spec.name for spec in registry.specs()],
            rules=str(settings.rules_path),
            data_dir=str(data_dir),
        )
        code = 0
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        if app.crash_reason is not None or worker.crash_reason is not None:
            log.error("worker_crashed", reason=repr(app.crash_reason or worker.crash_reason))
            code = code or 1
        log.info("worker_stopped", worker=slot, exit_code=code)
        return code
    finally:
        with contextlib.suppress(Exception):
            loop.close()
        asyncio.set_event_loop(None)
        if cleanup:
            shutil.rmtree(data_dir, ignore_errors=True)


def run_workers(settings: ProcessorSettings, *, env: dict[str, str]) -> int:
    """Supervise ``settings.workers`` worker processes until SIGTERM/SIGINT or one of them fails."""
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
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
        return _stop_children(children) or failed
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_children(children: list[subprocess.Popen[bytes]]) -> int:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    code = 0
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker_killed", pid=child.pid, after_s=STOP_GRACE)
            child.kill()
            child.wait()
        if child.returncode not in (0, -signal.SIGTERM):
            code = code or 1
    return code


def child_env(**given: str) -> dict[str, str]:
    """The environment for worker processes: ours plus the flags this process was given."""
    env = dict(os.environ)
    env.update({f"THERMOFLOW_{name.upper()}": value for name, value in given.items()})
    return env
