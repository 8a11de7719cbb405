"""Shared helpers of the alerts integration tests: producing alert events, running a component."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

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
