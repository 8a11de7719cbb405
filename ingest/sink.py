"""The readings sink: ``telemetry.readings`` into the ``readings`` table, at least once, idempotently.

Per batch: decode (pure, :mod:`thermoflow.ingest.rows`), binary COPY the rows into ``readings``
(when some are stored already, COPY into a staging table and ``INSERT ... ON CONFLICT DO
NOTHING`` instead, so a replayed batch adds no rows: :class:`ReadingsWriter`), commit,
dead-letter what was no reading, and only then commit the Kafka offsets
(:class:`thermoflow.consume.ConsumeLoop`, which also holds the rebalance policy; the offsets of
the batches stored meanwhile commit together every ``sink_commit_every`` seconds at most).
The database work runs on a worker thread with a synchronous connection: binary COPY's
``write_row`` is then a plain C-accelerated call per row, and the event loop meanwhile fetches
and decodes the next batch (``sink_writers`` batches written at once, committed in order).
A database outage pauses consumption: the same batch is retried with backoff until it lands.
A row the database refuses for its data (a value out of range) is isolated by splitting the
batch (:func:`thermoflow.db.write_isolating`), dead-lettered with the database's reason, and the
rest is written and committed; rows that can be seen to be unstorable never get that far
(:func:`thermoflow.ingest.rows.rows_from_values`). A :class:`~thermoflow.watchdog.Watchdog` ends the process
when fetched records wait without a commit for ``stall_timeout`` and no retry explains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import psycopg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from psycopg import sql

from thermoflow import consume, db, kafka
from thermoflow.aiokafka_fetch import FetchPacing, deliver_raw_records
from thermoflow.events import DeadLetter, dead_letter_headers, kafka_source
from thermoflow.http import component_health, serve
from thermoflow.ingest.rows import ROW_COLUMNS, ROW_TYPES, Row, RowBatch, rows_from_values
from thermoflow.ingest.settings import IngestSettings
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.watchdog import Watchdog

log = get_logger(__name__)

_CREATE_STAGE: Final = sql.SQL(
    "CREATE TEMPORARY TABLE IF NOT EXISTS readings_stage ("
    " device_id text, metric text, value float8, ts timestamptz, seq int8, received_at timestamptz"
    ") ON COMMIT DELETE ROWS"
)
_DEVICE: Final = operator.itemgetter(0)
_COLUMNS: Final = sql.SQL(", ").join(sql.Identifier(column) for column in ROW_COLUMNS)
_COPY: Final = sql.SQL("COPY readings ({}) FROM STDIN (FORMAT BINARY)").format(_COLUMNS)
_COPY_STAGE: Final = sql.SQL("COPY readings_stage ({}) FROM STDIN (FORMAT BINARY)").format(_COLUMNS)
_INSERT_NEW: Final = sql.SQL(
    "INSERT INTO readings ({0}) SELECT {0} FROM readings_stage"
    " ORDER BY device_id, metric, ts ON CONFLICT DO NOTHING"
).format(_COLUMNS)


class ReadingsWriter:
    """Writes row batches idempotently; a synchronous connection, used from one worker thread.

    Two ways to write a batch, both one transaction:

    * **COPY straight into** ``readings``: the fast way, for a batch of new readings. A reading
      already stored (a replay, a duplicate from the bridge's at-least-once delivery) breaks
      the primary key, and the transaction is rolled back: nothing of it stays.
    * **Dedup**: COPY into a temporary staging table, then ``INSERT ... SELECT ... ON CONFLICT
      DO NOTHING``, which keeps only the new rows. Every row costs a second index probe and a
      second copy, measured at a third more database CPU per row than the plain COPY.

    A batch starts the fast way; when that meets a stored reading, the batch is written again
    by dedup, and so are the batches after it until one of them holds no stored reading (a
    replay comes as a run of such batches: each is tried the fast way only once).
    """

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self._conn: psycopg.Connection[Any] | None = None
        self._dedup = False  # the last batch held readings already stored

    def write(self, rows: Sequence[Row]) -> int:
        """Store the new readings among ``rows``; returns how many rows were new.

        Raises psycopg.Error, or the ``OverflowError``/``ValueError`` of a value psycopg cannot
        encode (see :func:`thermoflow.db.classify`).
        """
        conn = self._connection()
        try:
            if not self._dedup:
                try:
                    with conn.cursor() as cur:
                        self._copy(cur, _COPY, rows)
                        inserted = cur.rowcount
                    conn.commit()
                    return inserted
                except psycopg.errors.UniqueViolation:
                    conn.rollback()  # some are stored already: write the batch again, keeping the new ones
            with conn.cursor() as cur:
                self._copy(cur, _COPY_STAGE, rows)
                cur.execute(_INSERT_NEW)
                inserted = cur.rowcount
            conn.commit()
            self._dedup = inserted < len(rows)
            return inserted
        except Exception as exc:
            self._recover(exc)
            raise

    @staticmethod
    def _copy(cur: psycopg.Cursor[Any], statement: sql.Composed, rows: Sequence[Row]) -> None:
        with cur.copy(statement) as copy:
            copy.set_types(list(ROW_TYPES))
            # In key order, a device's rows go one after another into the same leaf pages of
            # the primary key instead of each to another page: measured at a fifth less database
            # CPU per row. Sorting by device alone is stable, so each device's rows keep their
            # (time) order, and costs a tenth of a sort by the whole key.
            for row in sorted(rows, key=_DEVICE):
                copy.write_row(row)

    def _recover(self, exc: Exception) -> None:
        """After a data error the connection is fine (roll back, keep it); after anything else, drop it."""
        if db.classify(exc) is db.Fault.DATA and self._conn is not None and not self._conn.closed:
            try:
                self._conn.rollback()
                return
            except psycopg.Error:
                pass
        self.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = db.connect(self.settings)
            conn.execute(_CREATE_STAGE)
            conn.commit()
            self._conn = conn
        return self._conn

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend process of the open connection (benchmarks read its CPU)."""
        return None if self._conn is None or self._conn.closed else self._conn.info.backend_pid

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


class ReadingsSink:
    """``await ReadingsSink(settings).run(stop)`` sinks until ``stop`` is set, then commits and returns.

    The batch handler of a :class:`~thermoflow.consume.ConsumeLoop` with a pipeline of
    ``sink_writers`` batches: each batch is decoded on the event loop and written on the next free
    connection, and the loop commits their offsets in fetch order once each is stored.
    """

    def __init__(self, settings: IngestSettings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics("sink")
        self._writers = [ReadingsWriter(settings) for _ in range(settings.sink_writers)]
        self._free: asyncio.Queue[ReadingsWriter] = asyncio.Queue()
        for writer in self._writers:
            self._free.put_nowait(writer)
        self.watchdog = Watchdog(component="sink", stall_after=settings.stall_timeout)
        self._next_log = 0.0

    def backend_pids(self) -> list[int]:
        """The PostgreSQL backends of the writers' open connections (benchmarks read their CPU)."""
        return [pid for pid in (writer.backend_pid for writer in self._writers) if pid is not None]

    async def run(self, stop: asyncio.Event) -> None:
        """Migrate the schema, then consume, write and commit batch after batch until ``stop``.

        ``/metrics``, ``/healthz`` and ``/readyz`` are served all along (:mod:`thermoflow.http`).
        """
        health = component_health(self.settings, self.watchdog, database=True)
        async with serve(self.settings.http_port, self.metrics, health):
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        if not await db.migrate_when_available(self.settings, stop):
            return
        deliver_raw_records([self.settings.readings_topic])  # no ConsumerRecord per reading
        consumer = kafka.consumer(
            self.settings, group_id=self.settings.sink_group, max_poll_records=self.settings.sink_batch
        )
        producer = kafka.producer(self.settings)

        async def start(batch: consume.Batch) -> consume.Durable:
            return self._start(batch, producer, stop)

        loop = consume.ConsumeLoop(
            consumer,
            topics=[self.settings.readings_topic],
            handle=start,
            watchdog=self.watchdog,
            batch_size=self.settings.sink_batch,
            wait=self.settings.sink_wait,
            # Every writer busy while the next batch is fetched and decoded; it waits for a free one.
            pipeline=len(self._writers),
            metrics=self.metrics,
            group=self.settings.sink_group,
            commit_every=self.settings.sink_commit_every,
            pacing=FetchPacing(
                consumer, min_bytes=self.settings.kafka_fetch_min_bytes, wait=self.settings.fetch_wait
            ),
        )
        try:
            await consumer.start()
            await producer.start()
            log.info("sink_started", topic=self.settings.readings_topic, group=self.settings.sink_group)
            self._next_log = time.monotonic() + self.settings.metrics_interval
            await loop.run(stop)
        finally:
            await consumer.stop()
            await producer.stop()
            for writer in self._writers:
                await asyncio.to_thread(writer.close)
            self._log_metrics("sink_stopped")

    def _start(
        self, batch: consume.Batch, producer: AIOKafkaProducer, stop: asyncio.Event
    ) -> consume.Durable:
        """Decode the batch here, write it on a worker thread: the loop fetches the next meanwhile."""
        if time.monotonic() >= self._next_log:
            self._next_log += self.settings.metrics_interval
            self._log_metrics("sink_metrics")
        if not batch.count:
            return consume.settled()
        values = [record.value for records in batch.records.values() for record in records]
        return asyncio.create_task(self._store(batch.records, rows_from_values(values), producer, stop))

    async def _store(
        self,
        records: consume.Records,
        batch: RowBatch,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> bool:
        """Write the batch and dead-letter what is no reading or was refused; False if stopped first.

        A database outage is retried until it ends; a row the database refuses is set apart.
        """
        started = time.monotonic()
        try:
            inserted, refused = await db.write_isolating(
                batch.rows, write=self._write, retry=lambda attempt: self._retry(attempt, stop)
            )
            errors = batch.errors + [(batch.sources[position], reason) for position, reason in refused]
            if errors:  # the rows are in; the batch is committed once its letters are too
                await db.retry_transient(
                    lambda: self._dead_letter(records, errors, producer),
                    stop=stop,
                    on_retry=self._dead_letter_failed,
                    transient=lambda exc: isinstance(exc, KafkaError),
                )
        except db.Stopped:
            return False  # this batch and the later ones come again, uncommitted
        if batch.errors:
            self.metrics.count("dead_lettered", len(batch.errors), reason="decode")
        if refused:
            self.metrics.count("dead_lettered", len(refused), reason="refused_by_database")
        self.metrics.count("consumed", len(batch.rows) + len(batch.errors))
        self.metrics.count("rows_inserted", inserted)
        self.metrics.count("rows_duplicate", len(batch.rows) - len(refused) - inserted)
        self.metrics.observe("batch_write", time.monotonic() - started)
        return True

    async def _write(self, rows: Sequence[Row]) -> int:
        writer = await self._free.get()
        try:
            return await asyncio.to_thread(writer.write, rows)
        finally:
            self._free.put_nowait(writer)

    async def _retry(self, attempt: Callable[[], Awaitable[int]], stop: asyncio.Event) -> int:
        return await db.retry_transient(attempt, stop=stop, on_retry=self._write_failed)

    def _write_failed(self, exc: BaseException, delay: float) -> None:
        self.metrics.count("write_failures")
        self.watchdog.retrying("database write failed")
        log.warning("database_write_failed", error=" ".join(str(exc).split()), retry_in=round(delay, 1))

    def _dead_letter_failed(self, exc: BaseException, delay: float) -> None:
        self.watchdog.retrying("dead letter failed")
        log.warning("dead_letter_failed", error=repr(exc), retry_in=round(delay, 1))

    async def _dead_letter(
        self, records: consume.Records, errors: list[tuple[int, str]], producer: AIOKafkaProducer
    ) -> None:
        """Each refused record's original value, with the reason and its topic/partition/offset."""
        located = [(tp, record) for tp, batch in records.items() for record in batch]  # decoding's order
        futures = []
        now = time.time()
        for index, reason in errors:
            tp, record = located[index]
            source = kafka_source(topic=tp.topic, partition=tp.partition, offset=record.offset)
            log.warning("dead_letter", source=source, error=reason)
            letter = DeadLetter(error=reason, stage="ingest", source=source, failed_at=now)
            futures.append(
                await producer.send(
                    self.settings.deadletter_topic, record.value or b"", headers=dead_letter_headers(letter)
                )
            )
        await asyncio.gather(*futures)

    def _log_metrics(self, event: str) -> None:
        snapshot = self.metrics.snapshot()
        log.info(event, counters=snapshot["counters"], latency=snapshot["latency"])


async def run_sink(settings: IngestSettings, *, stop: asyncio.Event, metrics: Metrics | None = None) -> None:
    """Run the sink until ``stop`` is set (the entry of `thermoflow sink`)."""
    await ReadingsSink(settings, metrics=metrics).run(stop)
