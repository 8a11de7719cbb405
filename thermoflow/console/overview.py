"""The overview's figures, sampled once a second by one task and shared by every open page.

Per hop, from what each hop has durably done, counted from the start of this console:

- **MQTT in**: messages the broker received, its own one-minute average
  (``$SYS/broker/load/publish/received/1min``, which Mosquitto updates every 10 s); while the
  broker has not said, what the bridge settled in Kafka (it acks the broker only then): readings
  records plus dead letters.
- **Kafka**: records appended to the readings topic (the sum of its end offsets).
- **stored**: records the sink's consumer group has committed, which it does only once their
  rows are in the database.

Consumer lag per group, dead letters per minute (the dead-letter topic's growth over the last
minute), open incidents by severity and the devices offline now (open ``offline`` incidents).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from thermoflow import mqtt
from thermoflow.console import queries
from thermoflow.console.pool import Pool
from thermoflow.console.settings import ConsoleSettings
from thermoflow.logs import get_logger

log = get_logger(__name__)

EVERY_S = 1.0


@dataclass(frozen=True)
class Counts:
    """Monotonic totals at one moment."""

    at: float
    kafka: int  # records in the readings topic
    deadletters: int  # records in the dead-letter topic
    stored: int  # readings-topic offsets the sink group has committed
    lag: dict[str, int] = field(default_factory=dict)


def rates(
    first: Counts, previous: Counts, now: Counts, minute_ago: Counts, *, ingest_deadletters: float
) -> dict[str, Any]:
    """The overview's figures from three moments (pure).

    ``ingest_deadletters`` is the share of dead letters that came from the bridge (the rest came
    from later stages and were never MQTT messages of their own).

    >>> a = Counts(at=0.0, kafka=100, deadletters=0, stored=90)
    >>> b = Counts(at=1.0, kafka=150, deadletters=2, stored=130)
    >>> figures = rates(a, a, b, a, ingest_deadletters=1.0)
    >>> figures["per_second"], figures["since_start"]["kafka"], figures["deadletters_per_minute"]
    ({'mqtt_in': 52.0, 'kafka': 50.0, 'stored': 40.0}, 50, 120.0)
    """
    span = max(now.at - previous.at, 1e-9)
    kafka_rate = max(0, now.kafka - previous.kafka) / span
    dead_rate = max(0, now.deadletters - previous.deadletters) / span
    stored_rate = max(0, now.stored - previous.stored) / span
    minute_span = now.at - minute_ago.at
    per_minute = (
        max(0, now.deadletters - minute_ago.deadletters) * 60.0 / minute_span if minute_span > 0 else 0.0
    )
    return {
        "per_second": {
            "mqtt_in": round(kafka_rate + dead_rate * ingest_deadletters, 1),
            "kafka": round(kafka_rate, 1),
            "stored": round(stored_rate, 1),
        },
        "since_start": {
            "kafka": max(0, now.kafka - first.kafka),
            "stored": max(0, now.stored - first.stored),
            "deadletters": max(0, now.deadletters - first.deadletters),
        },
        "deadletters_per_minute": round(per_minute, 1),
        "lag": dict(sorted(now.lag.items())),
    }


#: Mosquitto's moving average of PUBLISH packets received, per minute over the last minute.
BROKER_LOAD_TOPIC = "$SYS/broker/load/publish/received/1min"


class BrokerLoad:
    """Follows the broker's received-messages load in paho's network thread; ``per_second`` or None."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.per_second: float | None = None
        self._client = mqtt.client(settings, client_id=f"thermoflow-console-load-{secrets.token_hex(4)}")
        self._client.on_connect = lambda client, *_: client.subscribe(BROKER_LOAD_TOPIC, qos=0)
        self._client.on_message = self._on_message
        self._address = (settings.mqtt_host, settings.mqtt_port)

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            self.per_second = float(message.payload) / 60.0
        except ValueError:
            self.per_second = None

    def start(self) -> None:
        self._client.connect_async(*self._address, keepalive=30)
        self._client.loop_start()  # connects, and reconnects, in its own thread

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Overview:
    """Samples Kafka and the database every second; :meth:`wait` hands each new figure set out."""

    def __init__(
        self,
        settings: ConsoleSettings,
        pool: Pool,
        *,
        ingest_share: Callable[[], float] = lambda: 1.0,
        every: float = EVERY_S,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.every = every
        self._ingest_share = ingest_share
        self._first: Counts | None = None
        self._window: deque[Counts] = deque()
        self.latest: dict[str, Any] = {"ready": False}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._partitions: dict[str, int] = {}
        self.broker = BrokerLoad(settings)
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="overview")
        self.broker.start()

    async def stop(self) -> None:
        if self._task is not None:
            self.broker.stop()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, seen: int, timeout: float) -> dict[str, Any]:
        """The next figures after sample number ``seen`` (or the latest, after ``timeout``)."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.latest.get("sample", 0) > seen), timeout
                )
            return self.latest

    async def _run(self) -> None:
        try:
            await self._sample_forever()
        finally:
            await self._close()

    async def _kafka(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            self._admin = AIOKafkaAdminClient(**self.settings.kafka_options(), request_timeout_ms=5000)
            self._consumer = AIOKafkaConsumer(**self.settings.kafka_options(), group_id=None)
            await self._admin.start()
            await self._consumer.start()
        return self._admin, self._consumer

    async def _close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        with contextlib.suppress(Exception):
            if consumer is not None:
                await consumer.stop()
        with contextlib.suppress(Exception):
            if admin is not None:
                await admin.close()

    async def _sample_forever(self) -> None:
        sample = 0
        while True:
            started = time.monotonic()
            figures: dict[str, Any] = {}
            try:
                figures.update(self._figures(await self._counts(*await self._kafka())))
                broker = self.broker.per_second
                figures["mqtt_in_source"] = "broker, 1-min average" if broker is not None else "bridged"
                if broker is not None:
                    figures["per_second"]["mqtt_in"] = round(broker, 1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Kafka away: say so on the page, try again next second
                figures["kafka_error"] = f"{type(exc).__name__}: {exc}"[:300]
                await self._close()
            try:
                fleet = await self.pool.run(queries.fleet)
                figures["open_by_severity"] = fleet.open_by_severity
                figures["offline"] = [[device, at.isoformat()] for device, at in fleet.offline]
                figures["offline_count"] = fleet.offline_count
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database away: shown, retried
                figures["database_error"] = f"{type(exc).__name__}: {exc}"[:300]
            sample += 1
            figures.update(sample=sample, at=time.time(), ready=True)
            async with self._changed:
                self.latest = figures
                self._changed.notify_all()
            await asyncio.sleep(max(0.0, self.every - (time.monotonic() - started)))

    def _figures(self, now: Counts) -> dict[str, Any]:
        if self._first is None:
            self._first = now
        previous = self._window[-1] if self._window else now
        self._window.append(now)
        while len(self._window) > 2 and now.at - self._window[1].at >= 60.0:
            self._window.popleft()
        return rates(self._first, previous, now, self._window[0], ingest_deadletters=self._ingest_share())

    async def _counts(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> Counts:
        s = self.settings
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in dict.fromkeys([*s.groups, s.sink_group]):
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        wanted = {tp for offsets in committed.values() for tp in offsets}
        for topic in (s.readings_topic, s.deadletter_topic):
            if topic not in self._partitions:  # asked each second until the topic exists
                described = await admin.describe_topics([topic])
                found = [d for d in described if d.get("error_code", 0) == 0 and d.get("partitions")]
                if found:
                    self._partitions[topic] = len(found[0]["partitions"])
            wanted.update(TopicPartition(topic, p) for p in range(self._partitions.get(topic, 0)))
        ends: dict[TopicPartition, int] = await consumer.end_offsets(list(wanted)) if wanted else {}
        lag = {
            group: sum(max(0, ends.get(tp, offset) - offset) for tp, offset in offsets.items())
            for group, offsets in committed.items()
            if offsets and group in s.groups
        }
        sink = committed.get(s.sink_group, {})
        return Counts(
            at=time.monotonic(),
            kafka=sum(end for tp, end in ends.items() if tp.topic == s.readings_topic),
            deadletters=sum(end for tp, end in ends.items() if tp.topic == s.deadletter_topic),
            stored=sum(offset for tp, offset in sink.items() if tp.topic == s.readings_topic),
            lag=lag,
        )
