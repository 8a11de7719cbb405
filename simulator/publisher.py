"""The load generator's I/O: a pool of MQTT connections and a paced publish loop on one event loop.

Devices are spread over the connections in contiguous blocks (device ``d`` on connection
``d // ceil(devices / connections)``), so every message of a device goes through one
connection, in order. Connections are opened with a ramp (``ramp_s`` spreads them evenly;
at most ``connect_concurrency`` handshakes at a time) before the clock starts, and each
is kept up by its own small task that reconnects with exponential backoff.

The pace: at time ``t`` after the start, ``total_rate * t`` slots should have been taken.
Every step the loop takes what is due, up to a chunk limit. When it cannot keep up (CPU, or
more than ``max_backlog`` publishes waiting in the connections' queues), it falls behind
rather than queueing without bound, and the timeline and ``rate_held`` say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thermoflow.logs import get_logger
from thermoflow.simulator import packets
from thermoflow.simulator.connection import ConnectError, Connection, Endpoint, PublishStats
from thermoflow.simulator.engine import Engine

log = get_logger(__name__)


@dataclass
class Pool:
    """``count`` connections to one broker, kept up until :meth:`close`."""

    endpoint: Endpoint
    count: int
    qos: int
    window: int
    client_prefix: str
    stats: PublishStats = field(default_factory=PublishStats)
    connect_concurrency: int = 256
    connections: list[Connection] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _gate: asyncio.Semaphore | None = None
    _closing: bool = False
    _keepalive: asyncio.Task[None] | None = None

    async def open(self, *, ramp_s: float, timeout: float, stop: asyncio.Event | None = None) -> None:
        """Start every connection (spread over ``ramp_s``); wait until all are up, ``timeout`` or ``stop``."""
        self._gate = asyncio.Semaphore(self.connect_concurrency)
        started = time.monotonic()
        for i in range(self.count):
            conn = Connection(
                client_id=f"{self.client_prefix}-{i:05d}",
                endpoint=self.endpoint,
                qos=self.qos,
                window=self.window,
                stats=self.stats,
            )
            self.connections.append(conn)
            self._tasks.append(asyncio.create_task(self._keep_up(conn), name=conn.client_id))
            if stop is not None and stop.is_set():
                return
            if ramp_s > 0:
                delay = started + ramp_s * (i + 1) / self.count - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        ramped = time.monotonic()
        deadline = ramped + timeout
        while self.stats.connected < self.count and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            hopeless = self.stats.connected == 0 and self.stats.connect_failures >= self.count
            if hopeless and time.monotonic() - ramped > 3.0:
                break  # every connection failed, none came up: the broker is not there
            await asyncio.sleep(0.05)
        self._keepalive = asyncio.create_task(self._ping_idle())

    async def _keep_up(self, conn: Connection) -> None:
        assert self._gate is not None
        backoff = 0.1
        first = True
        while not self._closing:
            try:
                async with self._gate:
                    if self._closing:
                        return
                    await conn.connect()
            except (OSError, ConnectError, TimeoutError) as exc:
                self.stats.connect_failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                # One line per connection's first failure; the retries of a broker outage go to debug.
                report = log.warning if backoff == 0.1 else log.debug
                report("mqtt_connect_failed", client_id=conn.client_id, error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not first:
                self.stats.reconnects += 1
            first = False
            backoff = 0.1
            await conn.wait_lost()

    async def _ping_idle(self) -> None:
        interval = max(1.0, self.endpoint.keepalive / 2)
        while True:
            await asyncio.sleep(min(5.0, interval / 2))
            now = time.monotonic()
            for conn in self.connections:
                if now - conn.last_write > interval:
                    conn.ping()

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def unacked(self) -> int:
        return sum(conn.unacked for conn in self.connections)

    @property
    def buffered(self) -> int:
        return sum(conn.buffered for conn in self.connections)

    async def drain(self, *, timeout: float) -> bool:
        """Wait until nothing is queued and everything is acknowledged (QoS 1) or handed to the
        kernel (QoS 0); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats.queued == 0 and (self.unacked == 0 if self.qos else self.buffered == 0):
                return True
            await asyncio.sleep(0.05)
        return False

    async def close(self) -> None:
        self._closing = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        for start in range(0, len(self.connections), 1000):
            await asyncio.gather(*(conn.close() for conn in self.connections[start : start + 1000]))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class Sample:
    """One second of the run, for the timeline and the plot."""

    t: float
    written: int  # publishes written since the previous sample
    rate: float  # of those, per second (the last sample may cover less than a second)
    readings: int
    slots: int
    due: int
    queued: int
    unacked: int
    connected: int


@dataclass
class Pacer:
    """Runs the publish loop: takes due slots from the engine and hands them to the pool."""

    engine: Engine
    pool: Pool
    total_rate: float
    duration: float | None
    max_backlog: int
    step_s: float = 0.005
    timeline: list[Sample] = field(default_factory=list)
    readings: int = 0
    malformed: int = 0
    started: float = 0.0  # epoch seconds
    elapsed: float = 0.0
    _per_conn: int = 1
    _topics: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._per_conn = max(1, math.ceil(len(self.engine.fleet) / self.pool.count))

    def set_topics(self, topics: list[str]) -> None:
        self._topics = [packets.topic_field(t.encode()) for t in topics]

    async def run(self, stop: asyncio.Event, on_second: Callable[[Sample], Any] | None = None) -> None:
        """Publish until ``duration`` is over or ``stop`` is set."""
        loop = asyncio.get_running_loop()
        clock = loop.time
        start = clock()
        self.started = time.time()
        max_chunk = max(1000, int(self.total_rate * 0.05))
        next_sample = 1.0
        stats = self.pool.stats
        last_written = 0
        last_t = 0.0
        while not stop.is_set():
            elapsed = clock() - start
            if self.duration is not None and elapsed >= self.duration:
                elapsed = self.duration
            due = int(self.total_rate * elapsed) - self.engine.slots
            if due > 0 and stats.queued < self.max_backlog:
                self._send(min(due, max_chunk))
            if elapsed >= next_sample or (self.duration is not None and elapsed >= self.duration):
                span = max(elapsed - last_t, 1e-3)
                sample = Sample(
                    t=round(elapsed, 3),
                    written=stats.written - last_written,
                    rate=round((stats.written - last_written) / span, 1),
                    readings=self.readings,
                    slots=self.engine.slots,
                    due=int(self.total_rate * elapsed),
                    queued=stats.queued,
                    unacked=self.pool.unacked if self.pool.qos else 0,
                    connected=stats.connected,
                )
                last_written, last_t = stats.written, elapsed
                self.timeline.append(sample)
                next_sample = math.floor(elapsed) + 1.0
                if on_second is not None:
                    on_second(sample)
            if self.duration is not None and elapsed >= self.duration:
                break
            # Sleep until the next slot is due, but at least a little, so the loop yields.
            wait = self.step_s if due > 0 else max(self.step_s, 1.0 / self.total_rate)
            await asyncio.sleep(min(wait, 0.05))
        self.elapsed = clock() - start

    def _send(self, n: int) -> None:
        batch = self.engine.take(n, time.time())
        self.readings += batch.readings
        self.malformed += batch.malformed
        if not batch.payloads:
            return
        devices = batch.devices
        conn_of = devices // self._per_conn
        cuts = np.flatnonzero(conn_of[1:] != conn_of[:-1]) + 1
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), devices.size]
        all_topics = self._topics
        topics = [all_topics[d] for d in devices.tolist()]
        payloads = batch.payloads
        connections = self.pool.connections
        for a, b, c in zip(starts, ends, conn_of[starts].tolist(), strict=True):
            connections[c].publish(topics[a:b], payloads[a:b])
