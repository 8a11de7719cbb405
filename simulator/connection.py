"""A minimal MQTT 3.1.1 publisher over an asyncio transport, and a pool of thousands of them.

Why not paho or aiomqtt: a paho client costs tens of microseconds of Python per publish
(locks, message objects, its own packet queue) and aiomqtt wraps the same client; 10,000
of them would also mean 10,000 sets of callbacks and misc-loop timers. The simulator only
needs CONNECT, PUBLISH at QoS 0/1, PUBACK, PINGREQ and DISCONNECT, so it speaks them
itself: one :class:`asyncio.Protocol` per connection, all on one event loop (no thread per
connection), a batch of publishes joined into one ``write``, PUBACKs parsed in bulk.

QoS 1 keeps a bounded in-flight window per connection; what does not fit waits in the
connection's queue. After a reconnect, unacknowledged publishes are sent again with the
DUP flag (at least once: the pipeline downstream must drop the duplicate, and the
load test counts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from thermoflow.logs import get_logger
from thermoflow.simulator import packets

log = get_logger(__name__)

_ACK_SAMPLE_EVERY: Final = 8  # keep one PUBACK latency sample in 8: enough for percentiles
_ACK_SAMPLES_MAX: Final = 200_000
_READ_BUFFER_SIZE: Final = 64 << 10  # per read: thousands of PUBACKs


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect."""

    host: str
    port: int
    ssl: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = 60


@dataclass
class PublishStats:
    """Counters shared by every connection of a pool (one event loop: no locks needed)."""

    written: int = 0  # PUBLISH packets handed to a socket (QoS 0: "sent")
    resent: int = 0  # QoS 1 publishes sent again after a reconnect
    acked: int = 0  # QoS 1 PUBACKs received
    queued: int = 0  # publishes waiting: not connected, paused, or window full
    connected: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    reconnects: int = 0
    last_error: str | None = None  # of the last failed connection attempt
    ack_latency: list[float] = field(default_factory=list)
    _ack_count: int = 0


class ConnectError(Exception):
    """The broker refused or did not answer a CONNECT."""


class Connection(asyncio.BufferedProtocol):
    """One MQTT connection: a client id, a queue, and (QoS 1) a window of unacknowledged publishes.

    A buffered protocol: the transport reads into one buffer shared by every connection (they all
    run on one event loop, and each read is handed on before the next one starts), where a plain
    protocol's transport would allocate a fresh 256 KiB ``bytes`` per read, ~12 µs a read, for a
    few PUBACKs.
    """

    _read_buffer: Final = bytearray(_READ_BUFFER_SIZE)
    _read_view: Final = memoryview(_read_buffer)

    def __init__(self, *, client_id: str, endpoint: Endpoint, qos: int, window: int, stats: PublishStats):
        self.client_id = client_id
        self.endpoint = endpoint
        self.qos = qos
        self.window = window
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.last_write = 0.0
        self._buffer = bytearray()
        self._connack: asyncio.Future[int] | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._paused = False
        self._up = False
        self._queue: deque[tuple[bytes, bytes]] = deque()
        self._inflight: dict[int, tuple[bytes, bytes, float]] = {}
        self._next_id = 1

    # -- lifecycle -------------------------------------------------------------------------------

    async def connect(self, *, timeout: float = 10.0) -> None:
        """Open the socket, send CONNECT, wait for CONNACK; raise ConnectError or OSError."""
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._lost = asyncio.Event()
        endpoint = self.endpoint
        await asyncio.wait_for(
            loop.create_connection(
                lambda: self,
                endpoint.host,
                endpoint.port,
                ssl=endpoint.ssl,
                server_hostname=endpoint.host if endpoint.ssl else None,
            ),
            timeout,
        )
        assert self.transport is not None
        self.transport.write(
            packets.connect_packet(
                client_id=self.client_id,
                keepalive=endpoint.keepalive,
                username=endpoint.username,
                password=endpoint.password,
            )
        )
        try:
            code = await asyncio.wait_for(self._connack, timeout)
        except TimeoutError:
            self.transport.abort()
            raise ConnectError(f"{self.client_id}: no CONNACK within {timeout:.0f}s") from None
        if code != 0:
            self.transport.abort()
            reason = packets.CONNACK_CODES.get(code, f"code {code}")
            raise ConnectError(f"{self.client_id}: broker refused the connection: {reason}")
        self._up = True
        self.stats.connected += 1
        self._resend_inflight()
        self._flush()

    async def close(self, *, timeout: float = 5.0) -> None:
        """Send DISCONNECT after what is queued, and close the socket."""
        self.closing = True
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(packets.DISCONNECT_PACKET)
        self.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lost.wait(), timeout)

    async def wait_lost(self) -> None:
        await self._lost.wait()

    @property
    def up(self) -> bool:
        return self._up

    @property
    def unacked(self) -> int:
        return len(self._inflight)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def buffered(self) -> int:
        """Bytes written but still in the socket's send buffer (not yet taken by the kernel)."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    # -- publishing ------------------------------------------------------------------------------

    def publish(self, topics: list[bytes], payloads: list[bytes]) -> None:
        """Publish a batch (``topics`` are length-prefixed topic fields, see packets.topic_field)."""
        if self._up and not self._paused and not self._queue:
            if self.qos == 0:
                self._write_qos0(topics, payloads)
                return
            if len(self._inflight) + len(payloads) <= self.window:
                self._write_qos1(topics, payloads)
                return
        self._queue.extend(zip(topics, payloads, strict=True))
        self.stats.queued += len(payloads)
        self._flush()

    def _write_qos0(self, topics: Iterable[bytes], payloads: Iterable[bytes]) -> None:
        assert self.transport is not None
        out = list(map(packets.publish_qos0, topics, payloads))
        self.transport.write(b"".join(out))
        self.stats.written += len(out)
        self.last_write = time.monotonic()

    def _write_qos1(self, topics: Iterable[bytes], payloads: Iterable[bytes]) -> None:
        assert self.transport is not None
        now = time.monotonic()
        inflight = self._inflight
        lengths = packets.PUBLISH_LENGTHS
        pack = packets.pack_packet_id
        out: list[bytes] = []
        pid = self._next_id
        for topic, payload in zip(topics, payloads, strict=True):
            while pid in inflight:
                pid = pid % 65535 + 1
            inflight[pid] = (topic, payload, now)
            # packets.publish_qos1, inline: its parts joined once with the rest of the batch
            n = len(topic) + 2 + len(payload)
            out += (b"2", lengths[n] if n < 16384 else packets.remaining_length(n), topic, pack(pid), payload)
            pid = pid % 65535 + 1
        self._next_id = pid
        self.transport.write(b"".join(out))
        self.stats.written += len(out) // 5  # five parts a publish
        self.last_write = now

    def _flush(self) -> None:
        """Move queued publishes to the socket as far as the connection and the window allow."""
        if not (self._up and self._queue) or self._paused:
            return
        room = len(self._queue) if self.qos == 0 else self.window - len(self._inflight)
        if room <= 0:
            return
        take = min(room, len(self._queue))
        pop = self._queue.popleft
        topics, payloads = zip(*[pop() for _ in range(take)], strict=True)
        self.stats.queued -= take
        if self.qos == 0:
            self._write_qos0(topics, payloads)
        else:
            self._write_qos1(topics, payloads)

    def _resend_inflight(self) -> None:
        if not self._inflight or self.transport is None:
            return
        now = time.monotonic()
        out = []
        for pid, (topic, payload, _) in self._inflight.items():
            self._inflight[pid] = (topic, payload, now)
            out.append(packets.publish_qos1(topic, pid, payload, dup=True))
        self.transport.write(b"".join(out))
        self.stats.resent += len(out)

    def ping(self) -> None:
        if self._up and self.transport is not None:
            self.transport.write(packets.PINGREQ_PACKET)
            self.last_write = time.monotonic()

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._buffer.clear()
        self._paused = False

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_buffer[:nbytes])

    def data_received(self, data: bytes | bytearray) -> None:
        buffer = self._buffer
        buffer += data
        size = len(buffer)
        # Fast path: a buffer of whole PUBACKs (0x40 0x02 id id), the steady state at QoS 1.
        if size % 4 == 0 and buffer[0::4] == b"@" * (size // 4) and buffer[1::4] == b"\x02" * (size // 4):
            ids = array("H", bytes(buffer))
            ids.byteswap()
            buffer.clear()
            self._acked(ids[1::2])
            return
        try:
            found, used = packets.parse_packets(buffer)
        except packets.ProtocolError as exc:
            log.warning("mqtt_protocol_error", client_id=self.client_id, error=str(exc))
            if self.transport is not None:
                self.transport.abort()
            return
        del buffer[:used]
        acked = []
        for first, body in found:
            kind = first & 0xF0
            if kind == packets.PUBACK:
                acked.append(packets.puback_id(body))
            elif kind == packets.CONNACK and self._connack is not None and not self._connack.done():
                self._connack.set_result(body[1] if len(body) >= 2 else 255)
        if acked:
            self._acked(acked)

    def _acked(self, ids: array[int] | list[int]) -> None:
        inflight = self._inflight
        stats = self.stats
        now = time.monotonic()
        count = 0
        for pid in ids:
            entry = inflight.pop(pid, None)
            if entry is None:
                continue
            count += 1
            stats._ack_count += 1
            if stats._ack_count % _ACK_SAMPLE_EVERY == 0 and len(stats.ack_latency) < _ACK_SAMPLES_MAX:
                stats.ack_latency.append(now - entry[2])
        stats.acked += count
        if self._queue:
            self._flush()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._up:
            self.stats.connected -= 1
            if not self.closing:
                self.stats.disconnects += 1
                log.warning("mqtt_connection_lost", client_id=self.client_id, error=str(exc) if exc else None)
        self._up = False
        self.transport = None
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectError(f"{self.client_id}: connection closed before CONNACK"))
            self._connack.exception()  # retrieved by connect(); mark it seen if nobody waits
        self._lost.set()
