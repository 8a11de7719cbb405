"""The readings sink: ``telemetry.readings`` into the ``readings`` table, at least once, idempotently.

Per batch: decode (pure, :mod:`ingest.rows`), COPY the rows into a temporary staging table,
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` into ``readings`` (so a replayed batch adds no
rows), commit, dead-letter what was no reading, and only then commit the Kafka offsets.
The database work runs on a worker thread with a synchronous connection: binary COPY's
``write_row`` is then a plain C-accelerated call per row, and the event loop meanwhile fetches
and decodes the next batch (one batch ahead at most, so an outage holds back one batch).
A database outage pauses consumption: the same batch is retried with backoff until it lands.
A row the database refuses for its data (a value out of range) is isolated by splitting the
batch (:func:`thermoflow.db.write_isolating`), dead-lettered with the database's reason, and the
rest is written and committed; rows that can be seen to be unstorable never get that far
(:func:`ingest.rows.rows_from_values`). A :class:`~thermoflow.watchdog.Watchdog` ends the process
when fetched records wait without a commit for ``stall_timeout`` and no retry explains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from psycopg import sql

from ingest.rows import STAGE_COLUMNS, STAGE_TYPES, Row, RowBatch, rows_from_values
from ingest.settings import IngestSettings
from thermoflow import db, kafka
from thermoflow.events import DeadLetter, dead_letter_headers, kafka_source
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.watchdog import Watchdog

log = get_logger(__name__)

_CREATE_STAGE: Final = sql.SQL(
    "CREATE TEMPORARY TABLE IF NOT EXISTS readings_stage ("
    " device_id text, metric text, value float8, ts float8, seq int8, received_at float8"
    ") ON COMMIT DELETE ROWS"
)
_COPY_STAGE: Final = sql.SQL("COPY readings_stage ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(sql.Identifier(column) for column in STAGE_COLUMNS)
)
_INSERT: Final = sql.SQL(
    "INSERT INTO readings (device_id, metric, ts, value, seq, received_at)"
    " SELECT device_id, metric, to_timestamp(ts), value, seq, to_timestamp(received_at)"
    " FROM readings_stage ORDER BY device_id, metric, ts ON CONFLICT DO NOTHING"
)


Fetched = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class ReadingsWriter:
    """Writes row batches idempotently; a synchronous connection, used from one worker thread."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self._conn: psycopg.Connection[Any] | None = None

    def write(self, rows: Sequence[Row]) -> int:
        """COPY ``rows`` in and keep the new ones; returns how many rows were new.

        Raises psycopg.Error, or the ``OverflowError``/``ValueError`` of a value psycopg cannot
        encode (see :func:`thermoflow.db.classify`).
        """
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                with cur.copy(_COPY_STAGE) as copy:
                    copy.set_types(list(STAGE_TYPES))
                    for row in rows:
                        copy.write_row(row)
                cur.execute(_INSERT)
                inserted = cur.rowcount
            conn.commit()
            return inserted
        except Exception as exc:
            self._recover(exc)
            raise

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

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


class ReadingsSink:
    """``await ReadingsSink(settings).run(stop)`` sinks until ``stop`` is set, then commits and returns."""

    def __init__(self, settings: IngestSettings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics("sink")
        self._writers = [ReadingsWriter(settings) for _ in range(settings.sink_writers)]
        self._free: list[ReadingsWriter] = list(self._writers)
        self.watchdog = Watchdog(component="sink", stall_after=settings.stall_timeout)
        self._uncommitted = 0  # records fetched and not yet committed: the watchdog's "waiting"

    async def run(self, stop: asyncio.Event) -> None:
        """Migrate the schema, then consume, write and commit batch after batch until ``stop``."""
        if not await db.migrate_when_available(self.settings, stop):
            return
        consumer = kafka.consumer(
            self.settings,
            self.settings.readings_topic,
            group_id=self.settings.sink_group,
            max_poll_records=self.settings.sink_batch,
        )
        producer = kafka.producer(self.settings)
        try:
            await consumer.start()
            await producer.start()
            log.info("sink_started", topic=self.settings.readings_topic, group=self.settings.sink_group)
            self.watchdog.start()
            await self._consume(consumer, producer, stop)
        finally:
            self.watchdog.stop()
            await consumer.stop()
            await producer.stop()
            for writer in self._writers:
                await asyncio.to_thread(writer.close)
            self._log_metrics("sink_stopped")

    async def _consume(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, stop: asyncio.Event
    ) -> None:
        """Fetch and decode while up to ``sink_writers`` batches are written; commit offsets in order."""
        next_log = time.monotonic() + self.settings.metrics_interval
        writing: deque[tuple[asyncio.Task[bool], Fetched]] = deque()
        while True:
            fetched: Fetched = {}
            if not stop.is_set():
                fetched = await consumer.getmany(
                    timeout_ms=int(self.settings.sink_wait * 1000), max_records=self.settings.sink_batch
                )
            records = [record for batch in fetched.values() for record in batch]
            if records:
                self._uncommitted += len(records)
                self.watchdog.waiting(self._uncommitted)
                decoded = rows_from_values([record.value for record in records])
                if len(writing) >= len(self._writers) and not await self._finish_oldest(consumer, writing):
                    return
                task = asyncio.create_task(self._store(records, decoded, producer, stop))
                writing.append((task, fetched))
            while writing and (writing[0][0].done() or (stop.is_set() and not records)):
                if not await self._finish_oldest(consumer, writing):
                    return
            if stop.is_set() and not records and not writing:
                return
            if time.monotonic() >= next_log:
                next_log += self.settings.metrics_interval
                self._log_metrics("sink_metrics")

    async def _finish_oldest(
        self, consumer: AIOKafkaConsumer, writing: deque[tuple[asyncio.Task[bool], Fetched]]
    ) -> bool:
        """Wait for the oldest batch and commit its offsets; False (and wait for the rest) if stopped."""
        task, fetched = writing.popleft()
        if await task:
            await self._commit(consumer, fetched)
            return True
        # Stopped during a database outage: this batch and the later ones come again, uncommitted.
        await asyncio.gather(*(later for later, _ in writing), return_exceptions=True)
        writing.clear()
        return False

    async def _store(
        self,
        records: list[ConsumerRecord[bytes, bytes]],
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
        self.metrics.count("consumed", len(records))
        self.metrics.count("rows_inserted", inserted)
        self.metrics.count("rows_duplicate", len(batch.rows) - len(refused) - inserted)
        self.metrics.observe("batch_write", time.monotonic() - started)
        return True

    async def _write(self, rows: Sequence[Row]) -> int:
        writer = self._free.pop()  # one per batch being stored: never empty
        try:
            return await asyncio.to_thread(writer.write, rows)
        finally:
            self._free.append(writer)

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
        self,
        records: list[ConsumerRecord[bytes, bytes]],
        errors: list[tuple[int, str]],
        producer: AIOKafkaProducer,
    ) -> None:
        futures = []
        now = time.time()
        for index, reason in errors:
            record = records[index]
            source = kafka_source(topic=record.topic, partition=record.partition, offset=record.offset)
            log.warning("dead_letter", source=source, error=reason)
            letter = DeadLetter(error=reason, stage="ingest", source=source, failed_at=now)
            futures.append(
                await producer.send(
                    self.settings.deadletter_topic, record.value or b"", headers=dead_letter_headers(letter)
                )
            )
        await asyncio.gather(*futures)
        self.metrics.count("dead_lettered", len(errors))

    async def _commit(self, consumer: AIOKafkaConsumer, fetched: Fetched) -> None:
        offsets = {tp: batch[-1].offset + 1 for tp, batch in fetched.items() if batch}
        self._uncommitted -= sum(len(batch) for batch in fetched.values())
        try:
            await consumer.commit(offsets)
            self.watchdog.progress()
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions away: their new owner replays them, idempotently.
            log.warning("offset_commit_failed", error=str(exc))
            self.watchdog.retrying("offset commit failed")
        except KafkaError as exc:
            log.warning("offset_commit_failed", error=str(exc))
            self.watchdog.retrying("offset commit failed")
        self.watchdog.waiting(self._uncommitted)

    def _log_metrics(self, event: str) -> None:
        snapshot = self.metrics.snapshot()
        log.info(event, counters=snapshot["counters"], latency=snapshot["latency"])


async def run_sink(settings: IngestSettings, *, stop: asyncio.Event, metrics: Metrics | None = None) -> None:
    """Run the sink until ``stop`` is set (the entry of `thermoflow sink`)."""
    await ReadingsSink(settings, metrics=metrics).run(stop)
