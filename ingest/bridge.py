"""The MQTT→Kafka bridge: at least once, an MQTT message is acked only after Kafka acked its records.

One thread, one asyncio loop; paho runs on it (:class:`~thermoflow.ingest.mqtt_reader.PahoOnAsyncio`),
so ``client.ack`` is only called from the thread that owns the client and no lock is on the hot path.

- :mod:`thermoflow.ingest.mqtt_session` keeps one persistent session up; its reader
  (:mod:`thermoflow.ingest.mqtt_reader`, the one module on paho's internals) cuts the packets.
  ``_on_publish`` translates each message (pure, :mod:`thermoflow.ingest.records`) into the
  outbox and notes it in the ack line (``_pending``, :class:`thermoflow.ingest.acks.AckLine`).
- The sender task hands the outbox to the Kafka side (:mod:`thermoflow.ingest.delivery`): one
  batch per partition, and a delivery task that resends what failed until Kafka takes it. It flushes
  at half a window, or ``settings.linger`` after the first record (steady load: the last flush);
  the reader rests meanwhile and reads what came at the flush (:class:`~thermoflow.ingest.delivery.Outbox`).
- Acks go out in the order the messages came in (MQTT 3.1.1 section 4.6 asks for that):
  the head of the line is acked once it and everything before it is in Kafka.
- The bridge holds at most a window of ``min(mqtt_receive_maximum, bridge_max_pending)``
  messages between reading and acking them, whatever the broker sends (:mod:`thermoflow.ingest.acks`
  says why). That bounds memory, and the duplicates a ``kill -9`` leaves in Kafka: one window,
  plus PUBACKs the broker had not read yet (Mosquitto 2.0.11 drops those on the connection reset).
- A lost connection drops the held messages unacked, with their records not yet in Kafka: the
  persistent session redelivers them (QoS 1). Stopping is bounded (``_STOP_TIMEOUT``): what
  reaches Kafka in time is acked, the rest left for the broker; a stuck producer is abandoned.
- Each message starts a trace (:class:`~thermoflow.tracing.MessageTraces`): its records carry a
  ``traceparent``; a sampled one gets a ``bridge.message`` span from receipt to ack.
- A :class:`~thermoflow.watchdog.Watchdog` ends the process when messages are held, Kafka
  answers, and no ack has moved for ``stall_timeout``; Kafka or MQTT being down is not a stall.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from aiokafka import AIOKafkaProducer

from thermoflow import tracing
from thermoflow.http import component_health, serve
from thermoflow.ingest.acks import AckLine, Held
from thermoflow.ingest.delivery import Group, KafkaDelivery, Outbox, start_producer, stop_producer
from thermoflow.ingest.mapping import TopicTemplate
from thermoflow.ingest.mqtt_reader import check_paho_version
from thermoflow.ingest.mqtt_session import MqttSession
from thermoflow.ingest.records import DeadLetterNotes, Translator
from thermoflow.ingest.settings import IngestSettings
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.watchdog import Watchdog

log = get_logger(__name__)

#: Seconds from the stop signal to the bridge's return, whatever is down (within `run`'s grace).
_STOP_TIMEOUT: Final = 10.0
#: Of those, kept for the acks, the DISCONNECT and the producer once Kafka has had its time.
_STOP_RESERVE: Final = 3.0
#: Seconds without an ack, messages held, before the bridge asks whether Kafka answers at all
#: (a quarter of the stall timeout when that is shorter).
_PROBE_AFTER: Final = 5.0


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
        self._dead_letters = DeadLetterNotes(self.metrics, per_second=10)
        self._traces = tracing.MessageTraces(ratio=settings.trace_sample_ratio, service="bridge")
        self._pending = AckLine(window=min(settings.mqtt_receive_maximum, settings.bridge_max_pending))
        # Half the window per batch: the other half keeps coming in while Kafka acks the first.
        self._outbox = Outbox(batch=self._pending.window // 2, linger=settings.linger)
        self._received = 0  # counted here, moved into the metrics per flush (no lock per message)
        self._stopping = False
        self._sending = False
        self._mqtt = MqttSession(
            settings,
            on_publish=self._on_publish,
            room=self._pending.room,
            may_read=lambda: not self._stopping and self._pending.room() > 0,
            rest=lambda: bool(self._outbox) and self._outbox.linger > 0,  # gathering: read at the flush
            on_lost=self._on_lost,
            metrics=self.metrics,
            watchdog=self.watchdog,
        )
        self._io = self._mqtt.io  # the reading's pause and resume, and the client once open
        self._kafka: KafkaDelivery | None = None
        self._acked_at = time.monotonic()
        self._probe: asyncio.Task[None] | None = None
        # Early enough that an outage is known (retrying) well before it could look like a stall.
        self._probe_after = min(_PROBE_AFTER, self.watchdog.stall_after / 4 or _PROBE_AFTER)

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Bridge until ``stop`` is set; then stop reading, deliver and ack what is held, disconnect."""
        check_paho_version()
        health = component_health(self.settings, self.watchdog)
        health.ready_when("mqtt", self._mqtt.connected.is_set)
        self.watchdog.start()
        try:
            async with serve(self.settings.http_port, self.metrics, health):
                producer = await start_producer(
                    self.settings, stop, self.watchdog, stop_reserve=_STOP_RESERVE
                )
                if producer is not None:
                    await self._bridge(producer, stop)
        finally:
            self.watchdog.stop()

    async def _bridge(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        """Read, produce and ack until ``stop``; then drain and close, all by the stop deadline."""
        deadline = time.monotonic() + _STOP_TIMEOUT  # set again when the stop comes
        self._kafka = kafka = KafkaDelivery(producer, self._delivered, self.metrics, self.watchdog)
        try:
            self._mqtt.open()
            tasks = [
                asyncio.create_task(self._sender(), name="bridge-sender"),
                asyncio.create_task(self._mqtt.keep_connected(stop), name="bridge-connection"),
                asyncio.create_task(self._housekeeping(), name="bridge-housekeeping"),
            ]
            try:
                await stop.wait()
                deadline = time.monotonic() + _STOP_TIMEOUT
                await self._drain(deadline)
            finally:
                for task in [*tasks, *kafka.tasks, *([self._probe] if self._probe else [])]:
                    task.cancel()
                await asyncio.gather(*tasks, *kafka.tasks, return_exceptions=True)
                self._io.close()
        finally:
            await stop_producer(producer, deadline)
            self._log_metrics("bridge_stopped")

    async def _drain(self, deadline: float) -> None:
        """Stop taking messages, get what is held into Kafka in time, ack it, then disconnect.

        Whatever is not in Kafka by then is dropped unacked: the broker sends it again to the
        next bridge on this session.
        """
        self._stopping = True
        self._io.pause()
        try:
            await asyncio.wait_for(self._kafka_idle(), max(0.0, deadline - _STOP_RESERVE - time.monotonic()))
        except TimeoutError:
            log.warning(
                "bridge_drain_timeout", held=len(self._pending), outbox=len(self._outbox),
                deliveries=len(self._deliveries()),
            )  # fmt: skip
        self._ack_ready()
        held = len(self._pending)
        await self._mqtt.disconnect(by=deadline - _STOP_RESERVE / 2)  # the rest is the producer's
        line = self._pending
        log.info("bridge_drained", unacked=line.unacked, held=held, acked=line.acked, taken=line.taken)

    async def _kafka_idle(self) -> None:
        """Until the outbox is sent and every delivery has its ack."""
        while self._outbox or self._sending or self._deliveries():
            if self._deliveries():
                await asyncio.wait(list(self._deliveries()))
            else:
                self._outbox.hurry()
                await asyncio.sleep(0.005)  # the sender picks the outbox up

    def _deliveries(self) -> set[asyncio.Task[None]]:
        return self._kafka.tasks if self._kafka else set()

    # -- MQTT ----------------------------------------------------------------------------------

    def _on_lost(self, reason: str) -> None:
        """Drop the held messages unacked, their records unsent: the resumed session sends them again."""
        self._traces.end_all()
        if dropped := self._pending.drop_all():
            log.info("mqtt_pending_dropped", pending=dropped, reason=reason)

    def _on_publish(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """One message into the outbox: its readings, or its dead letter. Never raises.

        It runs inside paho's read of the socket: an exception here would leave the message
        pending forever, and the acks of every message after it with it.
        """
        pending = Held(mid, qos, time.monotonic(), 1)
        room = self._pending.append(pending)
        self._received += 1
        trace = self._traces.begin(pending, attributes=lambda: {"messaging.mqtt.topic": topic[:200]})
        received_at = self._wall_clock()
        record = self._translator.plain(topic, payload, received_at=received_at, traceparent=trace)
        if record is not None:  # nearly every message: one reading, no Translation
            self._outbox.add_one(record, pending)
        else:  # the general path: any other payload, or the message's dead letter
            out = self._translator.general(topic, payload, received_at=received_at, traceparent=trace)
            self._dead_letters.note(topic, out.error, traceparent=trace, now=pending.received)
            pending.records = len(out.records)
            self._outbox.add(out.records, pending)
        if room <= 0:  # the window is full: no more comes in until acks go out
            self._io.pause()
            self._outbox.hurry()

    # -- Kafka ---------------------------------------------------------------------------------

    async def _sender(self) -> None:
        """Move the outbox into Kafka batches when its flush is due, one delivery task per flush."""
        while True:
            await self._outbox.due()
            flushed_at = time.monotonic()
            self._io.read_now(rest=self._outbox.steady)  # what waited in the socket joins this flush
            outbox = self._outbox.take()
            if self._io.resting:  # a steady load: the next flush reads what comes by then
                self._outbox.expect(flushed_at)
            if not outbox:
                continue
            self._flush_counts()
            self._sending = True  # neither in the outbox nor in a delivery yet: the drain waits
            try:
                assert self._kafka is not None
                await self._kafka.submit(outbox)
            finally:
                self._sending = False

    def _delivered(self, groups: list[Group]) -> None:
        """Kafka acked these groups (one response's): mark their messages, then ack once."""
        produced, readings_topic = 0, self.settings.readings_topic
        for group in groups:
            for owner in group.owners:  # AckLine.delivered, inlined: once per record
                if not owner.dropped:
                    owner.records -= 1
                    owner.done = owner.records <= 0
            if group.records and group.records[0].topic == readings_topic:  # one topic per group
                produced += len(group.records)
        self.metrics.count("produced", produced)
        self._ack_ready()

    def _ack_ready(self) -> None:
        """Ack, in arrival order, every message at the head of the line that Kafka has."""
        client = self._io.client
        if client is None or not (ready := self._pending.pop_ready()):
            return
        now = time.monotonic()
        for message in ready[::16]:  # a sample is plenty for percentiles, and cheaper
            self.metrics.observe("bridge_latency", now - message.received)
        client.ack_many([message.mid for message in ready if message.qos])
        self._traces.end(ready, acked=True)  # a sampled message's span ends with its ack
        self.metrics.count("acked", len(ready))
        self._acked_at = now
        self.watchdog.progress()
        self._io.resume()

    # -- housekeeping --------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """paho's keepalive pings, the watchdog's input, and the metrics log line."""
        next_log = time.monotonic() + self.settings.metrics_interval
        while True:
            await asyncio.sleep(1.0)
            self._mqtt.keepalive()
            held = len(self._pending)
            self.metrics.gauge("in_flight", held)
            self.watchdog.waiting(held)
            stuck = held and time.monotonic() - self._acked_at >= self._probe_after
            if stuck and self._kafka is not None and (self._probe is None or self._probe.done()):
                self._probe = asyncio.create_task(self._kafka.probe(self._probe_after))
            if time.monotonic() >= next_log:
                next_log += self.settings.metrics_interval
                self._log_metrics("bridge_metrics")

    def _flush_counts(self) -> None:
        self.metrics.count("received", self._received)
        self._received = 0

    def _log_metrics(self, event: str) -> None:
        self._flush_counts()
        self.metrics.gauge("in_flight", len(self._pending))
        self.metrics.gauge("in_flight_peak", self._pending.peak)
        self.metrics.gauge("unacked", self._pending.unacked)
        snapshot = self.metrics.snapshot()
        log.info(event, counters=snapshot["counters"], gauges=snapshot["gauges"], latency=snapshot["latency"])


async def run_bridge(
    settings: IngestSettings, *, stop: asyncio.Event, metrics: Metrics | None = None
) -> None:
    """Run the bridge until ``stop`` is set (the entry of `thermoflow bridge`)."""
    await Bridge(settings, metrics=metrics).run(stop)
