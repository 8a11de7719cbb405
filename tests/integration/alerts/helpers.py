"""Shared helpers of the alerts integration tests: producing alert events, running a component."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.group import MemberAssignment

from tests.conftest import ROOT
from thermoflow import kafka
from thermoflow.events import AlertEvent, encode
from thermoflow.settings import ThermoflowSettings


async def produce(settings: ThermoflowSettings, topic: str, alerts: Sequence[AlertEvent | bytes]) -> None:
    """Send alert events (or raw bytes) keyed by device id, and wait for every ack."""
    producer = kafka.producer(settings)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                a if isinstance(a, bytes) else encode(a),
                key=b"garbage" if isinstance(a, bytes) else a.device_id.encode(),
            )
            for a in alerts
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def running(run: Callable[..., Coroutine[Any, Any, None]]) -> AsyncIterator[asyncio.Event]:
    """Run ``run(stop, ready=...)`` as a task until the block ends; yields the stop event."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run(stop, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises what made it stop
    try:
        yield stop
    finally:
        stop.set()
        waiter.cancel()
        await asyncio.wait_for(task, 60)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 60, what: str = "") -> None:
    """Poll ``check`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class TcpProxy:
    """A real TCP proxy in front of a service: ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()


class Member:
    """One `thermoflow alerts <command>` process of a consumer group, its JSON log in ``log_path``.

    ``instance`` becomes ``THERMOFLOW_INSTANCE``: a static member with an id of its own, as
    under `thermoflow run`.
    """

    def __init__(self, command: str, env: dict[str, str], *, instance: int, log_path: Path) -> None:
        self.command = [sys.executable, "-m", "thermoflow", "alerts", command]
        self.env = {**env, "THERMOFLOW_INSTANCE": str(instance)}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=ROOT, stdout=log, stderr=log)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, and the exit code (0: a clean stop, its last batch committed)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def events(self, event: str) -> list[dict[str, Any]]:
        """The log lines of ``event``."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and f'"{event}"' in line]

    def assigned(self) -> bool:
        """Whether it holds partitions now (its last assignment was not empty)."""
        assignments = self.events("partitions_assigned")
        return bool(assignments and assignments[-1]["partitions"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


async def group_assignment(settings: ThermoflowSettings, group: str, topic: str) -> list[list[int]]:
    """The partitions of ``topic`` each member of consumer group ``group`` holds, as the broker says."""
    admin = AIOKafkaAdminClient(**settings.kafka_options())
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members = []
    for described in response.groups:
        for member in described[5]:
            topics = dict(MemberAssignment.decode(member[4]).assignment) if member[4] else {}
            members.append(sorted(topics.get(topic, [])))
    return members


async def until_members(settings: ThermoflowSettings, group: str, topic: str, count: int) -> None:
    """Wait until ``count`` members of ``group`` each hold partitions of ``topic``."""

    async def check() -> bool:
        members = await group_assignment(settings, group, topic)
        return len(members) == count and all(members)

    await eventually(check, timeout=60, what=f"{count} members of {group} holding partitions")
