"""`thermoflow alerts store`: telemetry.alerts -> alert_events and incidents in PostgreSQL.

Per batch, in one transaction: insert the events (``ON CONFLICT DO NOTHING RETURNING``: the
ones not stored yet), fold only those, and the batch's clears, in
topic order into the open incidents (:func:`thermoflow.alerts.lifecycle.fold_events`, pure; one
open incident per device, rule and kind) and upsert the incidents that changed. A clear is not
stored itself: it resolves the offline (or ingest_silent) incident it ends, and a replayed one
finds nothing open to resolve. The
batch's offsets are committed after the transaction (:class:`thermoflow.consume.ConsumeLoop`,
which also holds the rebalance policy): a crash or a rebalance replays the batch, and the replay
inserts nothing and counts nothing. A database outage keeps the batch, reconnects with backoff
and tries again (forever): consumption pauses and resumes without loss. An event the database
can never take (a time beyond year 9999, a NUL in an id) is dead-lettered, found before the
write (:func:`unstorable`) or isolated by splitting the batch when the database refuses it
(:func:`thermoflow.db.write_isolating`); the rest of the batch is stored and committed.

Resolution: a periodic sweep resolves the open incidents that the pipeline watermark of their
alerts partition (:class:`~thermoflow.alerts.watermarks.PipelineWatermarks`, from the processors'
watermark records on the same partition) has passed by ``resolve_after``: event time
throughout, so readings still upstream after an outage, or behind a stopped processor, hold
the watermark back and cannot re-fire an incident resolved too early. Incidents that end on a
clear (:data:`~thermoflow.events.CLEARED_CONDITIONS`) are left to their clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import msgspec
import psycopg
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from thermoflow import consume, db, kafka, tracing
from thermoflow.alerts.kafka_io import (
    DecodedBatch,
    KafkaDeadLetters,
    decode_batch,
    decode_event,
    partition_of,
)
from thermoflow.alerts.lifecycle import (
    Incident,
    IncidentKey,
    Policy,
    StoredIncident,
    fold_events,
    key_of_alert,
    resolve_cutoff,
)
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.alerts.watermarks import PipelineWatermarks
from thermoflow.events import CLEARED_CONDITIONS, AlertEvent, Clear, EventDecodeError, Watermark, kafka_source
from thermoflow.http import component_health, serve
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.watchdog import Watchdog

log = get_logger(__name__)
T = TypeVar("T")

_EVENT_COLUMNS = (
    "alert_id, reading_ts, device_id, metric, rule_id, severity, condition, threshold, value, detected_at"
)
# The batch's events as one JSON parameter (msgspec encodes the structs in C): one statement, where
# COPY into a staging table and an INSERT from it took three round trips, and one array parameter
# per column cost more to dump than the rest of the batch's work.
_INSERT_EVENTS = f"""
INSERT INTO alert_events ({_EVENT_COLUMNS})
SELECT alert_id, to_timestamp(reading_ts), device_id, metric, rule_id, severity,
       condition, threshold, value, to_timestamp(detected_at)
FROM json_to_recordset(%s::json) AS e(
    alert_id text, reading_ts float8, device_id text, metric text, rule_id text, severity text,
    condition text, threshold float8, value float8, detected_at float8)
ON CONFLICT DO NOTHING  -- also skips a duplicate within the batch: no DISTINCT (and no sort) needed
RETURNING alert_id
"""
_OPEN_INCIDENTS = """
SELECT incident_id, device_id, rule_id, metric, condition, threshold, severity, status,
       extract(epoch FROM opened_at)::float8, extract(epoch FROM last_breach_at)::float8,
       peak_value, breach_count
FROM incidents
WHERE status <> 'resolved'
  AND (device_id, rule_id, kind) IN (
      SELECT * FROM json_to_recordset(%s::json) AS k(device_id text, rule_id text, kind text))
FOR UPDATE
"""
# The latest resolved incident of each (device, rule, kind), for those without an open one: an alert
# whose reading lies inside it is a replay (the processors may cut re-read batches differently,
# giving a new alert id), and folds into nothing, as in the notifier, instead of opening an
# incident of its own. Asked for every key of the batch, with the open ones, in one round trip.
_LATEST_RESOLVED = """
SELECT i.incident_id, i.device_id, i.rule_id, i.metric, i.condition, i.threshold, i.severity, i.status,
       extract(epoch FROM i.opened_at)::float8, extract(epoch FROM i.last_breach_at)::float8,
       i.peak_value, i.breach_count, extract(epoch FROM i.resolved_at)::float8
FROM json_to_recordset(%s::json) AS k(device_id text, rule_id text, kind text)
CROSS JOIN LATERAL (
    SELECT * FROM incidents
    WHERE device_id = k.device_id AND rule_id = k.rule_id AND kind = k.kind AND status = 'resolved'
    ORDER BY opened_at DESC LIMIT 1
) AS i
"""
_UPSERT_INCIDENTS = """
INSERT INTO incidents (incident_id, device_id, rule_id, kind, metric, condition, threshold, severity, status,
                       opened_at, last_breach_at, peak_value, breach_count, resolved_at)
SELECT incident_id, device_id, rule_id, kind, metric, condition, threshold, severity, status,
       to_timestamp(opened_at), to_timestamp(last_breach_at), peak_value, breach_count,
       to_timestamp(resolved_at)
FROM json_to_recordset(%s::json) AS s(
    incident_id text, device_id text, rule_id text, kind text, metric text, condition text,
    threshold float8, severity text, status text, opened_at float8, last_breach_at float8,
    peak_value float8, breach_count bigint, resolved_at float8)
ORDER BY status = 'resolved' DESC  -- close an old incident before its successor opens
ON CONFLICT (incident_id) DO UPDATE SET
    severity = EXCLUDED.severity, status = EXCLUDED.status, last_breach_at = EXCLUDED.last_breach_at,
    peak_value = EXCLUDED.peak_value, breach_count = EXCLUDED.breach_count,
    resolved_at = EXCLUDED.resolved_at, updated_at = now()
"""
_json = msgspec.json.Encoder()
# Incidents that end on a clear (offline, ingest_silent, the pipeline's own) never resolve by quiet time.
_SWEEP_CANDIDATES = """
SELECT DISTINCT device_id FROM incidents
WHERE status <> 'resolved' AND last_breach_at <= to_timestamp(%s) AND kind <> ALL(%s::text[])
"""
_SWEEP = """
UPDATE incidents i
SET status = 'resolved', resolved_at = i.last_breach_at + make_interval(secs => %s), updated_at = now()
FROM unnest(%s::text[], %s::float8[]) AS due(device_id, cutoff)
WHERE i.device_id = due.device_id AND i.status <> 'resolved' AND i.last_breach_at <= to_timestamp(due.cutoff)
  AND i.kind <> ALL(%s::text[])
"""
_CLEARED_KINDS = sorted(CLEARED_CONDITIONS)  # a cleared condition is its own incident kind


def unstorable(alert: AlertEvent) -> str | None:
    """Why ``alert_events`` cannot take ``alert`` (naming the field), or None if it can.

    >>> from thermoflow.events import new_alert
    >>> unstorable(new_alert(device_id="f-1", metric="temperature", rule_id="r", severity="critical",
    ...     condition="above", threshold=-10.0, value=-4.0, reading_ts=1e19, detected_at=1.0))
    'unstorable alert event: `reading_ts` 1e+19 is outside the storable time range (years 1 to 9999)'
    """
    reason = (
        db.unstorable_epoch("reading_ts", alert.reading_ts)
        or db.unstorable_epoch("detected_at", alert.detected_at)
        or next(filter(None, (db.unstorable_text(name, getattr(alert, name)) for name in _TEXT_FIELDS)), None)
    )
    return f"unstorable alert event: {reason}" if reason else None


def unstorable_clear(clear: Clear) -> str | None:
    """Why the incident a clear resolves could not take it (naming the field), or None if it could.

    >>> from thermoflow.events import Clear
    >>> unstorable_clear(Clear(device_id="f-1", rule_id="r", condition="offline", since=1.0,
    ...     cleared_at=1e19, detected_at=1.0))
    'unstorable clear: `cleared_at` 1e+19 is outside the storable time range (years 1 to 9999)'
    """
    reason = (
        db.unstorable_epoch("since", clear.since)
        or db.unstorable_epoch("cleared_at", clear.cleared_at)
        or db.unstorable_text("device_id", clear.device_id)
        or db.unstorable_text("rule_id", clear.rule_id)
    )
    return f"unstorable clear: {reason}" if reason else None


def unstorable_event(event: AlertEvent | Clear) -> str | None:
    return unstorable_clear(event) if isinstance(event, Clear) else unstorable(event)


_TEXT_FIELDS = ("alert_id", "device_id", "metric", "rule_id")
Fetched = Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]


@dataclass(frozen=True)
class BatchResult:
    inserted: int
    duplicates: int
    incidents_changed: int


async def store_batch(
    conn: psycopg.AsyncConnection[Any], *, alerts: Sequence[AlertEvent | Clear], policy: Policy
) -> BatchResult:
    """Store a batch of alert events and update their incidents (with the batch's clears, in
    order), in one transaction.

    At a few alerts a batch, each round trip to the database costs the store more CPU than the
    work it carries, so there are few: the events go in one statement with one JSON parameter,
    the incidents' upsert too (no staging tables), and the latest resolved incidents are only
    asked for the keys without an open one.
    """
    events = [a for a in alerts if isinstance(a, AlertEvent)]
    async with conn.transaction(), conn.cursor() as cur:
        new_ids: set[str] = set()
        if events:
            await cur.execute(_INSERT_EVENTS, (_json.encode(events).decode(),))
            new_ids = {row[0] for row in await cur.fetchall()}
        fresh: list[AlertEvent | Clear] = []
        for a in alerts:
            if isinstance(a, Clear):
                fresh.append(a)  # not stored: a replayed clear finds its incident resolved already
            elif a.alert_id in new_ids:
                new_ids.discard(a.alert_id)  # the first of duplicates within the batch
                fresh.append(a)
        inserted = sum(isinstance(a, AlertEvent) for a in fresh)
        changed = await _update_incidents(cur, fresh, policy=policy) if fresh else 0
    return BatchResult(inserted=inserted, duplicates=len(events) - inserted, incidents_changed=changed)


def _keys_json(keys: Sequence[IncidentKey]) -> str:
    """Incident keys as the JSON rows the incident queries take."""
    return _json.encode([{"device_id": d, "rule_id": r, "kind": k} for d, r, k in keys]).decode()


async def _update_incidents(
    cur: psycopg.AsyncCursor[Any], events: list[AlertEvent | Clear], *, policy: Policy
) -> int:
    keys = sorted({key_of_alert(e) for e in events})
    await cur.execute(_OPEN_INCIDENTS, (_keys_json(keys),))
    latest = _stored_incidents(await cur.fetchall())
    without_open = [key for key in keys if key not in latest]
    if without_open:
        await cur.execute(_LATEST_RESOLVED, (_keys_json(without_open),))
        latest.update(_stored_incidents(await cur.fetchall()))
    known = {stored.incident.incident_id: stored for stored in latest.values()}
    changed = [
        stored
        for incident_id, stored in fold_events(latest, events, policy=policy).items()
        if known.get(incident_id) != stored  # a replay inside a resolved incident changes nothing
    ]
    if changed:
        await cur.execute(_UPSERT_INCIDENTS, (_incidents_json(changed),))
    return len(changed)


def _incidents_json(changed: Sequence[StoredIncident]) -> str:
    """The changed incidents as the JSON rows of :data:`_UPSERT_INCIDENTS`."""
    return _json.encode([
        {"incident_id": i.incident_id, "device_id": i.device_id, "rule_id": i.rule_id, "kind": i.kind,
         "metric": i.metric, "condition": i.condition, "threshold": i.threshold, "severity": i.severity,
         "status": status, "opened_at": i.opened_at, "last_breach_at": i.last_breach_at,
         "peak_value": i.peak_value, "breach_count": i.breach_count, "resolved_at": i.resolved_at}
        for i, status in changed
    ]).decode()  # fmt: skip


def _stored_incidents(rows: Sequence[Any]) -> dict[IncidentKey, StoredIncident]:
    """Incident rows (the open ones' query, or the latest resolved ones' with ``resolved_at``)."""
    found: dict[IncidentKey, StoredIncident] = {}
    for row in rows:
        incident = Incident(
            incident_id=row[0], device_id=row[1], rule_id=row[2], metric=row[3], condition=row[4],
            threshold=row[5], severity=row[6], opened_at=row[8], last_breach_at=row[9],
            peak_value=row[10], breach_count=row[11], resolved_at=row[12] if len(row) > 12 else None,
        )  # fmt: skip
        found[incident.key] = StoredIncident(incident, row[7])
    return found


async def sweep(
    conn: psycopg.AsyncConnection[Any], *, watermarks: Mapping[int, float], partitions: int, policy: Policy
) -> int:
    """Resolve the open incidents that their partition's watermark has passed by ``resolve_after``
    (not those that end on a clear).

    Args:
        watermarks: the pipeline watermark of each alerts partition this store reads (and knows
            one for); incidents of other partitions are left to whoever reads those.
        partitions: how many partitions the alerts topic has (a device's partition follows).

    Returns how many incidents were resolved.
    """
    if not watermarks:
        return 0
    cutoffs = {p: resolve_cutoff(watermark=w, policy=policy) for p, w in watermarks.items()}
    async with conn.transaction():
        cur = await conn.execute(_SWEEP_CANDIDATES, (max(cutoffs.values()), _CLEARED_KINDS))
        due = [
            (device_id, cutoffs[p])
            for (device_id,) in await cur.fetchall()
            if (p := partition_of(device_id, partitions=partitions)) in cutoffs
        ]
        if not due:
            return 0
        cur = await conn.execute(
            _SWEEP, (policy.resolve_after, [d for d, _ in due], [c for _, c in due], _CLEARED_KINDS)
        )
        return cur.rowcount


class AlertStore:
    """The consumer loop around :func:`store_batch` and :func:`sweep`."""

    def __init__(
        self,
        settings: AlertsSettings,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or Metrics("alerts.store")
        self.policy = Policy(resolve_after=settings.resolve_after, repeat_interval=settings.repeat_interval)
        self.watermarks = PipelineWatermarks()
        # Per alerts partition, the highest pipeline watermark since the last sweep. The highest,
        # not the latest: the notifier resolves at each watermark record, and an incident it
        # resolved there must be resolved here too, even if the watermark dipped since (a
        # partition that was idle got readings again).
        self._reached: dict[int, float] = {}
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._traces: Mapping[str, bytes] = {}  # the batch's traceparents by alert_id (for its logs)
        self.watchdog = Watchdog(component="alerts.store", stall_after=settings.stall_timeout)
        self.tracing = tracing.configure("alerts-store")

    async def _with_db(
        self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]], stop: asyncio.Event
    ) -> T | None:
        """Run ``work`` on a healthy connection, reconnecting with backoff; None if stopped first.

        Transient errors (an outage) are retried forever, a unique-key race with another store
        instance a few times (:func:`thermoflow.db.retry_transient`); a data error is raised.
        """
        try:
            return await db.retry_transient(
                partial(self._on_db, work), stop=stop, on_retry=self._database_failed
            )
        except db.Stopped:
            return None

    async def _on_db(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """One try of ``work``; the connection is dropped after any error but a data error."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await db.connect_async(self.settings)
            return await work(self._conn)
        except Exception as exc:
            if db.classify(exc) is not db.Fault.DATA:  # a data error rolled back; the connection is fine
                await self._close_db()
            raise

    def _database_failed(self, exc: BaseException, delay: float) -> None:
        log.warning("database_unavailable", error=" ".join(str(exc).split()), retry_in=round(delay, 1))
        self.metrics.count("database_errors")
        self.watchdog.retrying("database unavailable")

    async def _store(
        self, batch: Fetched, decoded: DecodedBatch, dead_letters: KafkaDeadLetters, stop: asyncio.Event
    ) -> bool:
        """Store the batch's events (and apply its clears); dead-letter those the database cannot take.
        False if stopped first."""
        results: list[BatchResult] = []

        async def write(part: Sequence[AlertEvent | Clear]) -> int:
            result = await self._on_db(partial(store_batch, alerts=part, policy=self.policy))
            results.append(result)
            return result.inserted

        storable: list[tuple[int, AlertEvent | Clear]] = []
        bad: list[tuple[int, AlertEvent | Clear, str]] = []
        for partition, alert in decoded.incident_events:
            reason = unstorable_event(alert)
            if reason is None:
                storable.append((partition, alert))
            else:
                bad.append((partition, alert, reason))
        try:
            _, refused = await db.write_isolating(
                [alert for _, alert in storable],
                write=write,
                retry=lambda attempt: db.retry_transient(attempt, stop=stop, on_retry=self._database_failed),
            )
            bad += [(*storable[index], reason) for index, reason in refused]
            if bad:
                await db.retry_transient(
                    partial(self._dead_letter, batch, bad, dead_letters),
                    stop=stop,
                    on_retry=self._dead_letter_failed,
                    transient=lambda exc: isinstance(exc, KafkaError),
                )
        except db.Stopped:
            return False  # the batch is not committed: it replays
        self.metrics.count("alerts_inserted", sum(r.inserted for r in results))
        self.metrics.count("alerts_duplicate", sum(r.duplicates for r in results))
        self.metrics.count("alerts_refused", len(bad))
        if bad:
            self.metrics.count("dead_lettered", len(bad), reason="refused")
        return True

    async def _dead_letter(
        self, batch: Fetched, bad: list[tuple[int, AlertEvent | Clear, str]], dead_letters: KafkaDeadLetters
    ) -> None:
        """Each refused event's original record, with the reason and its topic/partition/offset."""
        for partition, alert, reason in bad:
            tp = TopicPartition(self.settings.alerts_topic, partition)
            record = _record_of(alert, batch.get(tp, ()))
            offset = record.offset if record is not None else -1
            source = kafka_source(topic=tp.topic, partition=partition, offset=offset)
            traceparent = self._traces.get(alert.alert_id) if isinstance(alert, AlertEvent) else None
            log.warning("alert_refused", source=source, device_id=alert.device_id, error=reason,
                        trace_id=tracing.trace_id_of(traceparent))  # fmt: skip
            await dead_letters.send_raw(
                record.value or b"" if record is not None else b"",
                key=alert.device_id.encode("utf-8", "replace"),
                reason=reason,
                source=source,
            )

    def _trace_stored(self, decoded: DecodedBatch, *, started_ns: int) -> None:
        """An ``alerts.store`` span for each alert of a sampled trace, over its batch's write."""
        for _, alert in decoded.alerts:
            span = self.tracing.start(
                "alerts.store",
                decoded.traces.get(alert.alert_id),
                start_time=started_ns,
                attributes={"thermoflow.alert_id": alert.alert_id, "thermoflow.device_id": alert.device_id},
            )
            if span is not None:
                span.end()

    def _dead_letter_failed(self, exc: BaseException, delay: float) -> None:
        log.warning("dead_letter_failed", error=repr(exc), retry_in=round(delay, 1))
        self.watchdog.retrying("dead letter failed")

    def _observe(self, partition: int, mark: Watermark) -> None:
        self.watermarks.observe(partition, mark)
        watermark = self.watermarks.watermark(partition)
        if watermark is not None:
            self._reached[partition] = max(self._reached.get(partition, watermark), watermark)

    async def _sweep(self, consumer: Any, stop: asyncio.Event) -> None:
        partitions = consumer.partitions_for_topic(self.settings.alerts_topic)
        assigned = {tp.partition for tp in consumer.assignment()}
        watermarks = {p: w for p, w in self._reached.items() if p in assigned}
        if not partitions or not watermarks:
            return
        resolved = await self._with_db(
            partial(sweep, watermarks=watermarks, partitions=len(partitions), policy=self.policy), stop
        )
        if resolved is not None:
            self._reached.clear()
        if resolved:
            log.info("incidents_resolved", count=resolved)
            self.metrics.count("incidents_resolved", resolved)

    async def _close_db(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Store alerts until ``stop``, serving ``/metrics``, ``/healthz``, ``/readyz`` all along."""
        health = component_health(self.settings, self.watchdog, database=True)
        async with serve(self.settings.http_port, self.metrics, health):
            await self._run(stop, ready=ready)

    async def _run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        settings = self.settings
        if not await db.migrate_when_available(self.settings, stop):
            return
        await kafka.ensure_topics(settings, {settings.alerts_topic: 6, settings.deadletter_topic: 3})
        producer = kafka.producer(settings)
        await producer.start()
        dead_letters = KafkaDeadLetters(producer, settings.deadletter_topic)
        consumer = kafka.consumer(settings, group_id=settings.store_group, sparse=True)
        next_sweep = 0.0

        async def handle(batch: consume.Batch) -> bool:
            """Store the batch (watermarks first, in order), sweep when due; False if stopped first."""
            nonlocal next_sweep
            started_ns = time.time_ns()
            decoded = await decode_batch(batch.records, dead_letters)
            self._traces = decoded.traces
            for partition, mark in decoded.watermarks:
                self._observe(partition, mark)
            if decoded.incident_events and not await self._store(batch.records, decoded, dead_letters, stop):
                return False  # stopped during an outage: the batch is not committed, it will replay
            if decoded.traces and self.tracing.enabled:
                self._trace_stored(decoded, started_ns=started_ns)
            now = self.clock()
            if now >= next_sweep:
                await self._sweep(consumer, stop)
                next_sweep = now + settings.sweep_interval
            return True

        loop = consume.ConsumeLoop(
            consumer,
            topics=[settings.alerts_topic],
            handle=consume.inline(handle),
            watchdog=self.watchdog,
            batch_size=settings.store_batch_size,
            wait=settings.store_batch_wait,
            metrics=self.metrics,
            group=settings.store_group,
            commit_every=settings.alerts_commit_every,
        )
        try:
            await consumer.start()
            log.info("store_started", topic=settings.alerts_topic, group=settings.store_group,
                     database=settings.database_url_redacted)  # fmt: skip
            if ready is not None:
                ready.set()
            await loop.run(stop)
        finally:
            await consumer.stop()
            await producer.stop()
            await self._close_db()
            log.info("store_stopped", **self.metrics.snapshot()["counters"])


def _record_of(
    event: AlertEvent | Clear, records: Sequence[ConsumerRecord[bytes, bytes]]
) -> ConsumerRecord[bytes, bytes] | None:
    """The fetched record ``event`` was decoded from (rare path: only for a refused event)."""
    for record in records:
        with contextlib.suppress(EventDecodeError):
            if decode_event(record.value or b"", record.headers) == event:
                return record
    return None
