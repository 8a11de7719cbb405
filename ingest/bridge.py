"""The MQTT→Kafka bridge: at least once, an MQTT message is acked only after Kafka acked its records.

One thread, one asyncio loop. paho-mqtt runs on that loop through its external-loop hooks
(``on_socket_open`` / ``on_socket_register_write`` ...), so ``client.ack`` is always called from
the thread that owns the client (paho's ack is not thread-safe) and no lock sits on the hot path.

- The socket's reader callback reads a chunk and cuts its packets (:mod:`thermoflow.ingest.mqtt_reader`);
  ``_on_publish`` translates each message (pure, :mod:`thermoflow.ingest.records`) into the outbox and notes
  it in the ack line (``_pending``, :class:`thermoflow.ingest.acks.AckLine`).
- The sender task turns the outbox into one Kafka batch per partition (``send_batch``: one future
  per batch, not per record) and starts a delivery task that waits for the acks and resends what
  failed, with backoff, until Kafka takes it.
- Acks go out in the order the messages came in (MQTT 3.1.1 section 4.6 asks for that):
  the head of the line is acked once it and everything before it is in Kafka.
- The bridge holds at most a window of messages between reading and acking them
  (:mod:`thermoflow.ingest.acks`): ``min(mqtt_receive_maximum, bridge_max_pending)``. Its reader stops
  handing on PUBLISHes when the window is full, whatever the broker sends (Mosquitto 2.0 keeps to
  the receive maximum only until the first ack). That bounds memory, and the bridge's share of
  the duplicates a ``kill -9`` leaves in Kafka: at most one window, plus PUBACKs the broker had
  not read yet (Mosquitto 2.0.11 drops those when the dead bridge's connection resets).
- A lost connection drops the held messages without acking them, and their records not yet in
  Kafka: the persistent session redelivers them (QoS 1) after the reconnect.
- Stopping is bounded (``_STOP_TIMEOUT``) whatever is down: what reaches Kafka in time is acked,
  the rest is dropped unacked for the broker to redeliver, and the producer is abandoned if it
  cannot flush.
- A :class:`~thermoflow.watchdog.Watchdog` ends the process when messages are held, Kafka
  answers, and no ack has moved for ``stall_timeout``; Kafka or MQTT being down is not a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as paho
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from thermoflow import kafka, mqtt
from thermoflow.ingest.acks import AckLine, Held
from thermoflow.ingest.mapping import TopicTemplate
from thermoflow.ingest.mqtt_reader import BulkReadClient
from thermoflow.ingest.records import LogSampler, OutRecord, Translator
from thermoflow.ingest.settings import IngestSettings
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.watchdog import Watchdog

log = get_logger(__name__)

_BACKOFF_FIRST: Final = 0.5
_BACKOFF_MAX: Final = 30.0
#: Seconds from the stop signal to the bridge's return, whatever is down (within `run`'s grace).
_STOP_TIMEOUT: Final = 10.0
#: Of those, kept for the acks, the DISCONNECT and the producer once Kafka has had its time.
_STOP_RESERVE: Final = 3.0
#: Seconds without an ack, messages held, before the bridge asks whether Kafka answers at all
#: (a quarter of the stall timeout when that is shorter).
_PROBE_AFTER: Final = 5.0

_Pending = Held  # one MQTT message held until Kafka has its records (the name _on_publish uses)


@dataclass(slots=True)
class _Group:
    """Records bound for one topic-partition, and the messages they belong to."""

    records: list[OutRecord] = field(default_factory=list)
    owners: list[_Pending] = field(default_factory=list)


def _backoff(attempt: int) -> float:
    return float(min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**attempt) * random.uniform(0.8, 1.2))


class Bridge:
    """``await Bridge(settings).run(stop)`` bridges until ``stop`` is set, then drains and returns."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        metrics: Metrics | None = None,
        wall_clock: Callable[[], float] = time.time,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics("bridge")
        self.watchdog = watchdog or Watchdog(component="bridge", stall_after=settings.stall_timeout)
        self._wall_clock = wall_clock
        self._translator = Translator(
            TopicTemplate(settings.topic_template),
            readings_topic=settings.readings_topic,
            deadletter_topic=settings.deadletter_topic,
            limits=settings.payload_limits,
            deadletter_max_bytes=settings.deadletter_max_bytes,
        )
        self._dead_letter_log = LogSampler(per_second=10)
        self._pending = AckLine(window=min(settings.mqtt_receive_maximum, settings.bridge_max_pending))
        self._outbox: list[tuple[OutRecord, _Pending]] = []
        self._outbox_ready = asyncio.Event()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._partitions: dict[str, int] = {}
        self._partition_of: dict[tuple[str, bytes], int] = {}
        self._round_robin = 0
        self._received = 0  # counted here, moved into the metrics per flush (no lock per message)
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._reading = False
        self._stopping = False
        self._sending = False
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._producer: AIOKafkaProducer | None = None
        self._client: BulkReadClient | None = None
        self._acked_at = time.monotonic()
        self._probe: asyncio.Task[None] | None = None
        # Early enough that an outage is known (retrying) well before it could look like a stall.
        self._probe_after = min(_PROBE_AFTER, self.watchdog.stall_after / 4 or _PROBE_AFTER)

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Bridge until ``stop`` is set; then stop reading, deliver and ack what is held, disconnect."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.watchdog.start()
        try:
            self._producer = await self._start_producer(stop)
            if self._producer is not None:
                await self._bridge(self._producer, stop)
        finally:
            self.watchdog.stop()

    async def _bridge(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        """Read, produce and ack until ``stop``; then drain and close, all by the stop deadline."""
        deadline = time.monotonic() + _STOP_TIMEOUT  # set again when the stop comes
        try:
            self._client = self._make_client()
            tasks = [
                asyncio.create_task(self._sender(), name="bridge-sender"),
                asyncio.create_task(self._keep_connected(stop), name="bridge-connection"),
                asyncio.create_task(self._housekeeping(), name="bridge-housekeeping"),
            ]
            try:
                await stop.wait()
                deadline = time.monotonic() + _STOP_TIMEOUT
                await self._drain(deadline)
            finally:
                for task in [*tasks, *self._deliveries, *([self._probe] if self._probe else [])]:
                    task.cancel()
                await asyncio.gather(*tasks, *self._deliveries, return_exceptions=True)
                self._close_client()
        finally:
            await self._stop_producer(producer, deadline)
            self._log_metrics("bridge_stopped")

    async def _start_producer(self, stop: asyncio.Event) -> AIOKafkaProducer | None:
        """Start the producer, retrying with backoff while Kafka is unreachable (None if stopped first)."""
        attempt = 0
        while not stop.is_set():
            producer = kafka.producer(self.settings, linger_ms=0)
            starting = asyncio.ensure_future(producer.start())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not starting.done():  # stopped while Kafka does not answer: give up on it
                starting.cancel()
                await self._stop_producer(producer, time.monotonic() + _STOP_RESERVE)
                return None
            error = starting.exception()
            if error is None:
                return producer
            if not isinstance(error, KafkaError | OSError):
                raise error
            await self._stop_producer(producer, time.monotonic() + _STOP_RESERVE)
            delay = _backoff(attempt)
            log.warning("kafka_unreachable", error=str(error), retry_in=round(delay, 1))
            self.watchdog.retrying("kafka unreachable")
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return None

    @staticmethod
    async def _stop_producer(producer: AIOKafkaProducer, deadline: float) -> None:
        """Close the producer; one that cannot flush (Kafka gone) is abandoned at the deadline."""
        try:
            await asyncio.wait_for(producer.stop(), max(0.5, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("kafka_producer_abandoned", reason="its flush did not finish by the stop deadline")
        except (KafkaError, OSError) as exc:
            log.warning("kafka_producer_stop_failed", error=repr(exc))

    async def _drain(self, deadline: float) -> None:
        """Stop taking messages, get what is held into Kafka in time, ack it, then disconnect.

        Whatever is not in Kafka by then is dropped unacked: the broker sends it again to the
        next bridge on this session.
        """
        self._stopping = True
        self._pause_reading()
        try:
            await asyncio.wait_for(self._kafka_idle(), max(0.0, deadline - _STOP_RESERVE - time.monotonic()))
        except TimeoutError:
            log.warning(
                "bridge_drain_timeout", held=len(self._pending), outbox=len(self._outbox),
                deliveries=len(self._deliveries),
            )  # fmt: skip
        self._ack_ready()
        held = len(self._pending)
        client = self._client
        if client is not None and self._connected.is_set():
            flushed_by = deadline - _STOP_RESERVE / 2  # the rest is the producer's
            while client.want_write() and time.monotonic() < flushed_by:
                client.loop_write()
                await asyncio.sleep(0.001)
            client.disconnect()
            while client.want_write() and time.monotonic() < flushed_by:
                client.loop_write()
                await asyncio.sleep(0.001)
        line = self._pending
        log.info("bridge_drained", unacked=line.unacked, held=held, acked=line.acked, taken=line.taken)

    async def _kafka_idle(self) -> None:
        """Until the outbox is sent and every delivery has its ack."""
        while self._outbox or self._sending or self._deliveries:
            if self._deliveries:
                await asyncio.wait(list(self._deliveries))
            else:
                self._outbox_ready.set()
                await asyncio.sleep(0.005)  # the sender picks the outbox up

    # -- MQTT ----------------------------------------------------------------------------------

    def _make_client(self) -> BulkReadClient:
        settings = self.settings
        client = mqtt.client(
            settings,
            client_id=settings.mqtt_client_id,
            version=settings.mqtt_version,
            clean=False,
            manual_ack=True,
            cls=BulkReadClient,
            on_publish=self._on_publish,
            room=self._pending.room,
        )
        assert isinstance(client, BulkReadClient)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    def _connect_blocking(self) -> None:
        """paho's connect (a blocking socket connect): run in a worker thread."""
        assert self._client is not None
        settings = self.settings
        if settings.mqtt_version == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.mqtt_session_expiry
            properties.ReceiveMaximum = settings.mqtt_receive_maximum
            self._client.connect(
                settings.mqtt_host,
                settings.mqtt_port,
                keepalive=settings.mqtt_keepalive,
                clean_start=False,
                properties=properties,
            )
        else:
            self._client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=settings.mqtt_keepalive)

    async def _keep_connected(self, stop: asyncio.Event) -> None:
        """Connect, and reconnect with backoff whenever the connection is lost."""
        attempt = 0
        while not stop.is_set():
            self._lost.clear()
            try:
                await asyncio.to_thread(self._connect_blocking)
            except (OSError, ValueError) as exc:
                delay = _backoff(attempt)
                attempt += 1
                self.metrics.count("mqtt_connect_failures")
                self.watchdog.retrying("mqtt unreachable")
                log.warning(
                    "mqtt_connect_failed",
                    url=self.settings.mqtt_url,
                    error=str(exc),
                    retry_in=round(delay, 1),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            await self._lost.wait()
            if self._connected.is_set():
                attempt = 0
            else:
                attempt += 1
            self._connected.clear()
            if not stop.is_set():
                delay = _backoff(attempt)
                log.warning("mqtt_connection_lost", retry_in=round(delay, 1))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    def _on_connect(
        self, client: paho.Client, _userdata: Any, flags: Any, reason: Any, _properties: Any
    ) -> None:
        if reason.is_failure:
            log.error("mqtt_connect_refused", reason=str(reason))
            client.disconnect()
            return
        self._connected.set()
        self.metrics.count("mqtt_connects")
        log.info(
            "mqtt_connected",
            url=self.settings.mqtt_url,
            client_id=self.settings.mqtt_client_id,
            session_present=bool(flags.session_present),
        )
        # Subscribing again is harmless when the session kept the subscriptions, and needed when not.
        client.subscribe([(topic_filter, 1) for topic_filter in self.settings.topic_filters])

    def _on_subscribe(
        self, _client: paho.Client, _userdata: Any, _mid: int, reasons: Any, _properties: Any
    ) -> None:
        granted = [str(reason) for reason in reasons]
        if any(reason.is_failure for reason in reasons):
            log.error("mqtt_subscribe_refused", filters=self.settings.topic_filters, reasons=granted)
        else:
            log.info("mqtt_subscribed", filters=self.settings.topic_filters, granted=granted)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _properties: Any
    ) -> None:
        # The unacked messages come again in the resumed session: drop them without acking,
        # with their records not yet sent (the sender and the retries skip dropped messages).
        dropped = self._pending.drop_all()
        if dropped:
            log.info("mqtt_pending_dropped", pending=dropped, reason=str(reason))
        self._reading = False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._lost.set)

    def _on_publish(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """One message into the outbox: its readings, or its dead letter. Never raises.

        It runs inside paho's read of the socket: an exception here would leave the message
        pending forever, and the acks of every message after it with it.
        """
        pending = _Pending(mid, qos, time.monotonic())
        self._pending.append(pending)
        self._received += 1
        received_at = self._wall_clock()
        try:
            translation = self._translator.translate(topic, payload, received_at=received_at)
        except Exception as exc:  # translate does not raise; if it ever does, one message pays
            log.exception("translate_failed", topic=topic[:200])
            reason = f"internal error translating message: {type(exc).__name__}"
            translation = self._translator.dead_letter(topic, payload, reason, received_at=received_at)
        if translation.error is not None:
            self.metrics.count("dead_lettered")
            held = self._dead_letter_log.admit(now=pending.received)
            if held is not None:
                log.warning("dead_letter", topic=topic[:200], error=translation.error[:500], not_logged=held)
        pending.records = len(translation.records)
        outbox = self._outbox
        for record in translation.records:
            outbox.append((record, pending))
        if len(self._pending) >= self.settings.bridge_max_pending:
            self._pause_reading()
        self._outbox_ready.set()

    # -- paho on our loop ----------------------------------------------------------------------

    def _on_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._socket_opened, sock)

    def _in_loop(self, callback: Callable[[socket.socket], None], sock: socket.socket) -> None:
        """Run now when on the loop's thread (paho closes the socket right after), else hand over."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            callback(sock)
        else:
            self._loop.call_soon_threadsafe(callback, sock)

    def _socket_opened(self, sock: socket.socket) -> None:
        self._sock = sock
        self._resume_reading()

    def _on_socket_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._socket_closed, sock)

    def _socket_closed(self, sock: socket.socket) -> None:
        assert self._loop is not None
        if sock.fileno() != -1:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if self._sock is sock:
            self._sock = None
            self._reading = False

    def _on_register_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._register_write, sock)

    def _register_write(self, sock: socket.socket) -> None:
        assert self._loop is not None and self._client is not None
        if sock is self._sock:
            self._loop.add_writer(sock, self._client.loop_write)

    def _on_unregister_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._loop is not None and sock is not None:
            self._loop.remove_writer(sock)

    def _readable(self) -> None:
        """One chunk of what the socket holds (up to 64 KiB); the loop calls again while more is there."""
        client = self._client
        if client is None or not self._reading:
            return
        client.loop_read()
        if client.holding:  # the window is full: read again once acks make room
            self._pause_reading()

    def _pause_reading(self) -> None:
        if self._reading and self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)
        self._reading = False

    def _resume_reading(self) -> None:
        """Read again, once there is room in the window (a no-op while stopping or unconnected)."""
        loop, sock = self._loop, self._sock
        if self._reading or self._stopping or sock is None or loop is None or self._pending.room() <= 0:
            return
        loop.add_reader(sock, self._readable)
        self._reading = True
        if self._client is not None and self._client.holding:
            loop.call_soon(self._readable)  # packets already read wait: no readable event will come

    # -- Kafka ---------------------------------------------------------------------------------

    async def _sender(self) -> None:
        """Move the outbox into Kafka batches, one delivery task per flush."""
        while True:
            await self._outbox_ready.wait()
            if self.settings.bridge_linger and not self._stopping:
                # Let a few reads gather: one produce request per linger, not one per socket read.
                await asyncio.sleep(self.settings.bridge_linger)
            self._outbox_ready.clear()
            if not self._outbox:
                continue
            outbox, self._outbox = self._outbox, []
            self._flush_counts()
            self._resume_reading()
            self._sending = True  # neither in the outbox nor in a delivery yet: the drain waits
            try:
                sent = await self._send(await self._group(outbox))
                task = asyncio.create_task(self._deliver(sent))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
            finally:
                self._sending = False

    async def _group(self, outbox: list[tuple[OutRecord, _Pending]]) -> dict[tuple[str, int], _Group]:
        groups: dict[tuple[str, int], _Group] = {}
        for record, owner in outbox:
            if owner.dropped:  # its connection is gone: the broker sends the message again
                continue
            partition = await self._partition(record)
            group = groups.get((record.topic, partition))
            if group is None:
                group = groups[(record.topic, partition)] = _Group()
            group.records.append(record)
            group.owners.append(owner)
        return groups

    async def _partition(self, record: OutRecord) -> int:
        """The default partitioner's choice (murmur2 of the key), cached per key: murmur2 is pure Python."""
        count = self._partitions.get(record.topic)
        if count is None:
            count = await self._partition_count(record.topic)
        if record.key is None:
            self._round_robin += 1
            return self._round_robin % count
        cache_key = (record.topic, record.key)
        partition = self._partition_of.get(cache_key)
        if partition is None:
            partition = (murmur2(record.key) & 0x7FFFFFFF) % count
            if len(self._partition_of) > 1_000_000:
                self._partition_of.clear()
            self._partition_of[cache_key] = partition
        return partition

    async def _partition_count(self, topic: str) -> int:
        assert self._producer is not None
        attempt = 0
        while True:
            try:
                partitions = await self._producer.partitions_for(topic)
                if partitions:
                    self._partitions[topic] = len(partitions)
                    return len(partitions)
            except KafkaError as exc:
                log.warning("kafka_metadata_failed", topic=topic, error=str(exc))
                self.watchdog.retrying("kafka metadata unavailable")
            await asyncio.sleep(_backoff(attempt))
            attempt += 1

    async def _send(
        self, groups: dict[tuple[str, int], _Group]
    ) -> list[tuple[_Group, asyncio.Future[Any] | BaseException]]:
        """One ``send_batch`` per full batch; returns each group's delivery future (or the send error)."""
        assert self._producer is not None
        producer = self._producer
        sent: list[tuple[_Group, asyncio.Future[Any] | BaseException]] = []
        for (topic, partition), group in groups.items():
            start = 0
            while start < len(group.records):
                batch = producer.create_batch()
                end = start
                for record in group.records[start:]:
                    if (
                        batch.append(
                            key=record.key, value=record.value, timestamp=None, headers=record.headers
                        )
                        is None
                    ):
                        break
                    end += 1
                if end == start:  # a record bigger than a batch: cannot happen below max_payload_bytes
                    raise ValueError(
                        f"record of {len(group.records[start].value)} bytes exceeds the batch size"
                    )
                piece = _Group(group.records[start:end], group.owners[start:end])
                try:
                    sent.append((piece, await producer.send_batch(batch, topic, partition=partition)))
                except KafkaError as exc:
                    sent.append((piece, exc))
                start = end
        return sent

    async def _deliver(self, sent: list[tuple[_Group, asyncio.Future[Any] | BaseException]]) -> None:
        """Wait for Kafka's acks; resend what failed, with backoff, until it is in."""
        attempt = 0
        while sent:
            failed: dict[tuple[str, int], _Group] = {}
            for group, outcome in sent:
                error: BaseException | None = outcome if isinstance(outcome, BaseException) else None
                if error is None:
                    assert isinstance(outcome, asyncio.Future)
                    try:
                        await outcome
                    except KafkaError as exc:
                        error = exc
                if error is None:
                    self._delivered(group)
                    continue
                self.metrics.count("produce_failures", len(group.records))
                self.watchdog.retrying("kafka produce failed")
                log.warning(
                    "kafka_produce_failed", records=len(group.records), error=repr(error), attempt=attempt
                )
                retry = failed.setdefault((group.records[0].topic, -1), _Group())
                retry.records.extend(group.records)
                retry.owners.extend(group.owners)
            if not failed:
                break
            await asyncio.sleep(_backoff(attempt))
            attempt += 1
            regrouped = await self._group(
                [(r, o) for g in failed.values() for r, o in zip(g.records, g.owners, strict=True)]
            )
            sent = await self._send(regrouped)

    def _delivered(self, group: _Group) -> None:
        readings = 0
        delivered = self._pending.delivered
        readings_topic = self.settings.readings_topic
        for record, owner in zip(group.records, group.owners, strict=True):
            delivered(owner)
            if record.topic == readings_topic:
                readings += 1
        self.metrics.count("produced", readings)
        self._ack_ready()

    def _ack_ready(self) -> None:
        """Ack, in arrival order, every message at the head of the line that Kafka has."""
        client = self._client
        if client is None:
            return
        ready = self._pending.pop_ready()
        if not ready:
            return
        now = time.monotonic()
        for message in ready[::16]:  # a sample is plenty for percentiles, and cheaper
            self.metrics.observe("bridge_latency", now - message.received)
        client.ack_many([message.mid for message in ready if message.qos])
        self.metrics.count("acked", len(ready))
        self._acked_at = now
        self.watchdog.progress()
        self._resume_reading()

    # -- housekeeping --------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """paho's keepalive pings, the watchdog's input, and the metrics log line."""
        next_log = time.monotonic() + self.settings.metrics_interval
        while True:
            await asyncio.sleep(1.0)
            if self._client is not None and self._sock is not None:
                self._client.loop_misc()
            held = len(self._pending)
            self.metrics.gauge("in_flight", held)
            self.watchdog.waiting(held)
            stuck = held and time.monotonic() - self._acked_at >= self._probe_after
            if stuck and self._producer is not None and (self._probe is None or self._probe.done()):
                self._probe = asyncio.create_task(self._probe_kafka(self._producer))
            if time.monotonic() >= next_log:
                next_log += self.settings.metrics_interval
                self._log_metrics("bridge_metrics")

    async def _probe_kafka(self, producer: AIOKafkaProducer) -> None:
        """Acks are not moving: Kafka not answering is an outage (retrying), not a stall."""
        try:
            answered = bool(
                await asyncio.wait_for(producer.client.force_metadata_update(), self._probe_after)
            )
        except (KafkaError, OSError, TimeoutError):
            answered = False
        if not answered:
            self.watchdog.retrying("kafka unreachable")

    def _flush_counts(self) -> None:
        if self._received:
            self.metrics.count("received", self._received)
            self._received = 0

    def _log_metrics(self, event: str) -> None:
        self._flush_counts()
        self.metrics.gauge("in_flight", len(self._pending))
        self.metrics.gauge("in_flight_peak", self._pending.peak)
        self.metrics.gauge("unacked", self._pending.unacked)
        snapshot = self.metrics.snapshot()
        log.info(event, counters=snapshot["counters"], gauges=snapshot["gauges"], latency=snapshot["latency"])

    def _close_client(self) -> None:
        if self._sock is not None:
            self._socket_closed(self._sock)
        if self._client is not None:
            self._client._sock_close()  # no public close without a DISCONNECT round
            self._client = None


async def run_bridge(
    settings: IngestSettings, *, stop: asyncio.Event, metrics: Metrics | None = None
) -> None:
    """Run the bridge until ``stop`` is set (the entry of `thermoflow bridge`)."""
    await Bridge(settings, metrics=metrics).run(stop)
