"""The measuring side of a load test: what reached Kafka and the database, and when.

:class:`KafkaMeter` reads ``telemetry.readings``, ``telemetry.alerts`` and
``telemetry.deadletter`` from the offsets they had when the run started (no consumer
group: it commits nothing and disturbs no one), keeps only records of this fleet, and
stores compact columns: device index, seq and ts of each reading, per-hop latencies, the
alert events, the dead letters that came from this fleet's MQTT topics.

Latency hops (seconds, from the publish time the simulator wrote into the payload):

- ``publish_to_bridge``: the reading's ``received_at`` (the bridge's clock) minus ``ts``;
- ``publish_to_kafka``: the Kafka record timestamp of the reading minus ``ts``;
- ``publish_to_alert``: the Kafka record timestamp of an alert minus its ``reading_ts``;
- ``publish_to_stored``: the ``readings`` row's ``stored_at`` minus ``ts`` (:func:`database_delivery`).

Each of those adds up every hop before it, so a queue early in the line shows in all of them. Two
intervals isolate a component's own share, per reading:

- ``bridge_to_kafka``: the reading's Kafka record timestamp minus its ``received_at`` (the bridge,
  from reading the message to handing it to its producer);
- ``kafka_to_alert``: an alert's Kafka record timestamp minus the Kafka record timestamp of the
  reading it names (matched by device and ``ts``): the processor, from its fetch to its send.

All on one machine's clock; across machines they are only as good as its NTP. Kafka record
timestamps have millisecond resolution (truncated), so a Kafka hop can read up to 1 ms low,
even slightly negative on an idle pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psycopg import sql

from thermoflow import db, kafka
from thermoflow.aiokafka_fetch import deliver_raw_records
from thermoflow.events import (
    CLEARED_CONDITIONS,
    AlertEvent,
    EventDecodeError,
    Reading,
    decode_alert,
    decode_reading,
    decode_readings,
    is_ack,
    is_clear,
    is_watermark,
)
from thermoflow.logs import get_logger
from thermoflow.settings import ThermoflowSettings
from thermoflow.simulator.score import percentiles
from thermoflow.topics import HEADER_SOURCE

log = get_logger(__name__)

#: Records per ``getmany``: one decode and a few array passes for each.
_MAX_RECORDS = 20000
#: The meter's fetches wait this long for data (its latencies come from record timestamps, not
#: from when it reads them): a few big fetches a second instead of one per consumer fetch_wait.
_FETCH_WAIT_MS = 500
_FETCH_MIN_BYTES = 4 << 20


@dataclass
class ConsumerGroups:
    """The consumer groups that read the readings topic during this run, and how far behind they are.

    A group counts as *active* when its committed offsets on the topic moved after the run
    started (or it appeared): the processors and the sink of the pipeline under test, not the
    stale groups of earlier runs on a shared topic. Only partitions a group committed count.
    """

    settings: ThermoflowSettings
    topic: str
    _admin: AIOKafkaAdminClient | None = None
    _probe: AIOKafkaConsumer | None = None
    _partitions: list[TopicPartition] = field(default_factory=list)
    _baseline: dict[str, dict[TopicPartition, int]] = field(default_factory=dict)

    async def start(self, partitions: list[TopicPartition]) -> None:
        self._partitions = [tp for tp in partitions if tp.topic == self.topic]
        self._admin = AIOKafkaAdminClient(**self.settings.kafka_options())
        await self._admin.start()
        self._probe = AIOKafkaConsumer(
            **self.settings.kafka_options(), group_id=None, enable_auto_commit=False
        )
        await self._probe.start()
        self._baseline = await self._committed()

    async def _committed(self) -> dict[str, dict[TopicPartition, int]]:
        assert self._admin is not None
        wanted = set(self._partitions)
        found: dict[str, dict[TopicPartition, int]] = {}
        for group in await self._admin.list_consumer_groups():
            offsets = await self._admin.list_consumer_group_offsets(group[0])
            mine = {tp: meta.offset for tp, meta in offsets.items() if tp in wanted and meta.offset >= 0}
            if mine:
                found[group[0]] = mine
        return found

    async def lag(self) -> dict[str, int]:
        """Records of the readings topic each active group has not committed yet."""
        assert self._probe is not None
        committed = await self._committed()
        active = {g: offsets for g, offsets in committed.items() if offsets != self._baseline.get(g)}
        if not active:
            return {}
        ends = await self._probe.end_offsets(self._partitions)
        return {
            g: sum(max(0, ends[tp] - offset) for tp, offset in offsets.items())
            for g, offsets in active.items()
        }

    async def close(self) -> None:
        if self._probe is not None:
            await self._probe.stop()
            self._probe = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None


@dataclass
class KafkaMeter:
    """Consumes the pipeline's topics during and after a run."""

    settings: ThermoflowSettings
    device_index: Mapping[str, int]
    mqtt_topics: Collection[str]
    since: float  # epoch seconds: readings older than this belong to another run
    readings_dev: array[int] = field(default_factory=lambda: array("q"))
    readings_seq: array[int] = field(default_factory=lambda: array("q"))
    readings_ts: array[float] = field(default_factory=lambda: array("d"))
    to_bridge: array[float] = field(default_factory=lambda: array("d"))
    to_kafka: array[float] = field(default_factory=lambda: array("d"))
    to_alert: array[float] = field(default_factory=lambda: array("d"))
    alert_dev: array[int] = field(default_factory=lambda: array("q"))  # of to_alert's alerts
    alert_reading_ts: array[float] = field(default_factory=lambda: array("d"))
    alerts: list[AlertEvent] = field(default_factory=list)
    deadletters: int = 0
    undecodable: int = 0
    foreign: int = 0
    lag_at_end: dict[str, int] = field(default_factory=dict)
    _groups: ConsumerGroups | None = None
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None
    _topics: dict[str, str] = field(default_factory=dict)

    async def start(self) -> None:
        """Position at the topics' current ends, then consume in the background."""
        s = self.settings
        self._topics = {
            s.readings_topic: "readings",
            s.alerts_topic: "alerts",
            s.deadletter_topic: "deadletter",
        }
        await kafka.ensure_topics(s, {s.readings_topic: 12, s.alerts_topic: 6, s.deadletter_topic: 3})
        # The meter reads a reading's value and timestamp: no ConsumerRecord per reading.
        deliver_raw_records([s.readings_topic])
        consumer = kafka.consumer(
            s,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=_FETCH_WAIT_MS,
            fetch_min_bytes=_FETCH_MIN_BYTES,
        )
        await consumer.start()
        self._consumer = consumer
        try:
            partitions = []
            for topic in self._topics:
                for p in consumer.partitions_for_topic(topic) or await self._partitions(consumer, topic):
                    partitions.append(TopicPartition(topic, p))
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            for tp, offset in ends.items():
                consumer.seek(tp, offset)
            self._groups = ConsumerGroups(s, s.readings_topic)
            await self._groups.start(partitions)
        except BaseException:
            await self.close()
            raise
        self._task = asyncio.create_task(self._consume())

    @staticmethod
    async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
        for _ in range(50):
            found = consumer.partitions_for_topic(topic)
            if found:
                return set(found)
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {topic} has no partitions")

    async def _consume(self) -> None:
        assert self._consumer is not None
        readings_topic = self.settings.readings_topic
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=_MAX_RECORDS)
            readings: list[Any] = []
            for tp, records in batches.items():
                if tp.topic == readings_topic:
                    readings += records
                elif self._topics[tp.topic] == "alerts":
                    self._alerts(records)
                else:
                    self._deadletters(records)
            if readings:
                self._readings(readings)

    def _readings(self, records: list[Any]) -> None:
        """Keep the columns of this fleet's readings: one decode for the whole fetch, then list passes.

        ``records`` are aiokafka's raw records or ``ConsumerRecord`` s (both have ``value`` and
        ``timestamp``). The fetch's values are decoded by one call
        (:func:`thermoflow.events.decode_readings`); if any of them is not a reading, the batch is
        decoded record by record, so one bad record costs only itself.
        """
        decoded: list[Any] | None = decode_readings([r.value for r in records])
        if decoded is None:
            records, decoded = self._decode_each(records)
        n = len(decoded)
        if not n:
            return
        index = self.device_index
        dev = np.fromiter((index.get(r.device_id, -1) for r in decoded), np.int64, n)
        ts = np.fromiter((r.ts for r in decoded), np.float64, n)
        mine = (dev >= 0) & (ts >= self.since)
        kept = int(np.count_nonzero(mine))
        self.foreign += n - kept
        if not kept:
            return
        seq = np.fromiter((-1 if r.seq is None else r.seq for r in decoded), np.int64, n)[mine]
        received = np.fromiter((r.received_at for r in decoded), np.float64, n)[mine]
        stamped = np.fromiter((r.timestamp for r in records), np.float64, n)[mine]
        ts = ts[mine]
        self.readings_dev.frombytes(dev[mine].tobytes())
        self.readings_seq.frombytes(seq.tobytes())
        self.readings_ts.frombytes(ts.tobytes())
        self.to_bridge.frombytes((received - ts).tobytes())
        self.to_kafka.frombytes((stamped / 1000.0 - ts).tobytes())

    def _decode_each(self, records: list[Any]) -> tuple[list[Any], list[Reading]]:
        """The records that are readings, and their readings; the others count as undecodable."""
        kept: list[Any] = []
        decoded: list[Reading] = []
        for record in records:
            try:
                decoded.append(decode_reading(record.value))
            except (EventDecodeError, TypeError):  # TypeError: a tombstone (no value)
                self.undecodable += 1
                continue
            kept.append(record)
        return kept, decoded

    def _alerts(self, records: list[Any]) -> None:
        for record in records:
            if is_watermark(record.headers) or is_clear(record.headers) or is_ack(record.headers):
                continue  # a processor's progress report, the end of an offline/silent condition, an ack
            try:
                alert = decode_alert(record.value)
            except EventDecodeError:
                self.undecodable += 1
                continue
            if alert.device_id not in self.device_index or alert.reading_ts < self.since:
                continue
            self.alerts.append(alert)
            if alert.condition not in CLEARED_CONDITIONS:  # offline's evidence is the last reading before it
                self.to_alert.append(record.timestamp / 1000.0 - alert.reading_ts)
                self.alert_dev.append(self.device_index[alert.device_id])
                self.alert_reading_ts.append(alert.reading_ts)

    def _deadletters(self, records: list[Any]) -> None:
        for record in records:
            source = dict(record.headers or ()).get(HEADER_SOURCE, b"").decode("utf-8", "replace")
            if source in self.mqtt_topics and record.timestamp / 1000.0 >= self.since:
                self.deadletters += 1

    @property
    def readings_received(self) -> int:
        return len(self.readings_dev)

    def received_arrays(self) -> tuple[Any, Any, Any]:
        return (
            np.frombuffer(self.readings_dev, dtype=np.int64).copy(),
            np.frombuffer(self.readings_seq, dtype=np.int64).copy(),
            np.frombuffer(self.readings_ts, dtype=np.float64).copy(),
        )

    def latency(self, *, with_ts: bool) -> dict[str, Any]:
        """Percentiles per hop; without a device timestamp (number payloads) only the alert hop is known."""
        hops: dict[str, Any] = {"publish_to_alert": percentiles(np.frombuffer(self.to_alert))}
        if with_ts:
            hops["publish_to_bridge"] = percentiles(np.frombuffer(self.to_bridge))
            hops["publish_to_kafka"] = percentiles(np.frombuffer(self.to_kafka))
            to_kafka = np.frombuffer(self.to_kafka)
            hops["bridge_to_kafka"] = percentiles(to_kafka - np.frombuffer(self.to_bridge))
            hops["kafka_to_alert"] = percentiles(self.kafka_to_alert())
        return hops

    def kafka_to_alert(self) -> Any:
        """Per alert whose reading was measured: its record timestamp minus that reading's (seconds).

        The reading is found by device and ``ts`` (a device's ``ts`` only grows); an alert on a
        reading the meter did not see (a lost one) has no figure.
        """
        alert_dev = np.frombuffer(self.alert_dev, dtype=np.int64)
        if not alert_dev.size or not self.readings_dev:
            return np.empty(0)
        origin = self.since

        def keys(dev: Any, ts: Any) -> Any:
            return (dev << 40) | np.round((ts - origin) * 1e6).astype(np.int64)

        reading_keys = keys(np.frombuffer(self.readings_dev, dtype=np.int64), np.frombuffer(self.readings_ts))
        order = np.argsort(reading_keys, kind="stable")
        sorted_keys = reading_keys[order]
        alert_ts = np.frombuffer(self.alert_reading_ts)
        wanted = keys(alert_dev, alert_ts)
        at = np.minimum(np.searchsorted(sorted_keys, wanted), sorted_keys.size - 1)
        found = sorted_keys[at] == wanted
        reading_stamp = np.frombuffer(self.readings_ts) + np.frombuffer(self.to_kafka)  # record timestamps
        alert_stamp = alert_ts + np.frombuffer(self.to_alert)
        return (alert_stamp - reading_stamp[order[at]])[found]

    async def settle(
        self,
        *,
        readings: int,
        deadletters: int,
        timeout: float,
        quiet_s: float,
        stall_s: float = 20.0,
        stop: asyncio.Event | None = None,
    ) -> bool:
        """Wait until the pipeline caught up with the run, and say whether it did.

        Caught up: ``readings`` and ``deadletters`` arrived, every active consumer group of the
        readings topic (processors, sink) committed everything, and no alert came for
        ``quiet_s``. Gives up after ``timeout``, or when nothing moved (records, lag) for
        ``stall_s`` seconds: a loss, or a pipeline that stopped.
        """
        assert self._groups is not None
        deadline = time.monotonic() + timeout
        seen: tuple[int, ...] = ()
        changed = quiet_since = time.monotonic()
        next_lag_check = 0.0
        while not (stop is not None and stop.is_set()):
            now = time.monotonic()
            if now >= next_lag_check:
                self.lag_at_end = await self._groups.lag()
                next_lag_check = time.monotonic() + 0.5
            progress = (self.readings_received, len(self.alerts), self.deadletters, *self.lag_at_end.values())
            if progress != seen:
                changed = now
                if not seen or progress[1] != seen[1]:
                    quiet_since = now
                seen = progress
            complete = (
                self.readings_received >= readings
                and self.deadletters >= deadletters
                and not any(self.lag_at_end.values())
            )
            if complete and now - quiet_since >= quiet_s:
                return True
            if now >= deadline or now - changed >= stall_s:
                return complete
            await asyncio.sleep(0.1)
        return False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._groups is not None:
            await self._groups.close()
            self._groups = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


_READINGS_TABLE = "readings"


async def database_delivery(
    settings: ThermoflowSettings,
    *,
    device_ids: list[str],
    since: float,
    until: float,
    expected: int,
    timeout: float,
    stall_s: float = 5.0,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Rows of this run in the ``readings`` table: count, duplicates, loss and publish-to-stored latency.

    Waits up to ``timeout`` for the sink to store ``expected`` rows, or until the count has not
    grown for ``stall_s`` seconds (called once Kafka has settled, so the sink had its input).
    Rows are this run's when their device is in the fleet and their ``ts`` is within ``[since, until]``.
    """
    conn = await db.connect_async(settings, autocommit=True)
    try:
        columns = await _column_types(conn)
        if not {"device_id", "ts", "stored_at"} <= columns.keys():
            return {
                "error": f"table {_READINGS_TABLE} lacks device_id/ts/stored_at (columns: {sorted(columns)})"
            }

        def epoch(column: str) -> sql.Composable:
            ident = sql.Identifier(column)
            if columns[column].startswith("timestamp"):
                return sql.SQL("extract(epoch from {})").format(ident)
            return ident

        ts = epoch("ts")
        where = sql.SQL("device_id = ANY(%(devices)s) AND {ts} >= %(since)s AND {ts} <= %(until)s").format(
            ts=ts
        )
        params = {"devices": device_ids, "since": since, "until": until}
        count_query = sql.SQL("SELECT count(*), count(DISTINCT (device_id, ts)) FROM {} WHERE {}").format(
            sql.Identifier(_READINGS_TABLE), where
        )
        deadline = time.monotonic() + timeout
        rows = distinct = -1
        changed = time.monotonic()
        while True:
            cur = await conn.execute(count_query, params)
            row = await cur.fetchone()
            assert row is not None
            if (int(row[0]), int(row[1])) != (rows, distinct):
                changed = time.monotonic()
            rows, distinct = int(row[0]), int(row[1])
            now = time.monotonic()
            stalled = now - changed >= stall_s  # the sink stored nothing new for a while: it is done
            if distinct >= expected or stalled or now >= deadline or (stop is not None and stop.is_set()):
                break
            await asyncio.sleep(0.5)
        latency_query = sql.SQL(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY lag), max(lag), count(*)"
            " FROM (SELECT ({stored} - {ts})::float8 AS lag FROM {table} WHERE {where}) AS lags"
        ).format(stored=epoch("stored_at"), ts=ts, table=sql.Identifier(_READINGS_TABLE), where=where)
        cur = await conn.execute(latency_query, params)
        lat = await cur.fetchone()
    finally:
        await conn.close()
    latency = None
    if lat is not None and lat[2]:
        p50, p95, p99 = (float(v) for v in lat[0])
        latency = {
            "p50_ms": round(p50 * 1000, 3),
            "p95_ms": round(p95 * 1000, 3),
            "p99_ms": round(p99 * 1000, 3),
            "max_ms": round(float(lat[1]) * 1000, 3),
            "samples": int(lat[2]),
        }
    return {
        "expected": expected,
        "rows": rows,
        "unique": distinct,
        "lost": max(0, expected - distinct),
        "duplicates": rows - distinct,
        "latency": latency,
    }


async def _column_types(conn: Any) -> dict[str, str]:
    cur = await conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = %s AND table_schema = current_schema()",
        (_READINGS_TABLE,),
    )
    return {name: dtype for name, dtype in await cur.fetchall()}
