"""The faust app: each registered function runs as an agent over
``take_batches(stream, max_chunks, within=batch_wait)`` (faust's ``take_events``, cut
``batch_wait`` after a batch's oldest record reached Kafka), where each event is one fetch's
chunks of records, a chunk per partition (see :mod:`thermoflow.processors.batching` for why).

Per batch: decode (msgspec, columns) -> dead-letter the undecodable records -> call the
function (retried with backoff; a batch that keeps failing is dead-lettered whole) -> send
its events to the sink -> wait until Kafka has acked every record sent. Only then are the
batch's offsets committed (:class:`~thermoflow.processors.batching.Commits`). So nothing is
committed before its output is durable: at-least-once. A stateful function (the device detectors) also
writes its state to Kafka; that is done every ``state_interval``, not per batch, and the
batches processed since the last write stay uncommitted until the next one
(:meth:`BatchRunner.flush`): nothing is committed before the state covering it is stored.

Each event's Kafka record carries a ``traceparent`` (:mod:`thermoflow.tracing`): the one of the
reading that triggered it (an alert of the worst reading carries that reading's trace), or a new
trace for what no reading in the batch triggered (the timers' alerts). A sampled trace gets a
``processors.<function>`` span, from the batch's start to the acks, which the event's traceparent
names as its parent; nothing else costs a span, and a batch's readings are never looped over
for it.

After the acks, the batch moves its partitions' watermarks (:mod:`thermoflow.processors.watermarks`);
every ``watermark_interval`` a :class:`WatermarkEmitter` sends each owned partition's
watermark to every partition of the sink topic, behind the alerts it covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import operator
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
import msgspec
import numpy as np
from aiokafka.errors import KafkaError
from faust.types import TP

from thermoflow import kafka, tracing
from thermoflow.aiokafka_fetch import deliver_raw_records
from thermoflow.events import WATERMARK_HEADERS, DeadLetter, dead_letter_headers, encode, kafka_source
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.processors.batching import (
    CHUNK_SERIALIZER,
    Chunk,
    ChunkScheduler,
    Commits,
    take_batches,
)
from thermoflow.processors.columns import KafkaRecord, ReadingBatch, decode_batch
from thermoflow.processors.runtime import (
    Emit,
    FunctionBody,
    FunctionFailed,
    FunctionSpec,
    Registry,
    Stateful,
    call_with_retries,
)
from thermoflow.processors.settings import ProcessorSettings
from thermoflow.processors.thresholds import I64
from thermoflow.processors.watermarks import PartitionProgress, latest_per_partition
from thermoflow.watchdog import Watchdog

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = get_logger(__name__)
_encoder = msgspec.json.Encoder()
_partition = operator.attrgetter("partition")
_offset = operator.attrgetter("offset")


def broker_credentials(settings: ProcessorSettings) -> Any:
    """The shared Kafka security settings as faust credentials (None for PLAINTEXT)."""
    options = settings.kafka_options()
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"],
            ssl_context=options.get("ssl_context"),
        )
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return None


def build_app(
    settings: ProcessorSettings, *, registry: Registry, worker_index: int, data_dir: Path, metrics: Metrics
) -> faust.App:
    """A faust app running every function of ``registry``; one per worker process."""
    sources = frozenset(spec.source_topic(settings) for spec in registry.specs())
    # Their records reach the agents as aiokafka decoded them: no ConsumerRecord each, which cost
    # 12-23% of a worker with every detector on (thermoflow.aiokafka_fetch).
    deliver_raw_records(sources)
    app = faust.App(
        settings.processor_group,
        broker=[f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings),
        key_serializer="raw",
        value_serializer="raw",
        autodiscover=False,
        datadir=str(data_dir),
        store="memory://",
        # Stateless: no tables, no leader election, and topics are never created behind our back.
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=settings.web_port is not None,
        web_port=(settings.web_port or 6066) + worker_index,
        web_host="127.0.0.1",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval,
        # faust's default session timeout is 60s: a SIGKILLed worker's partitions would stall that long.
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(1.0, settings.session_timeout / 6),
        broker_commit_every=max(settings.max_batch, 10_000),
        broker_max_poll_records=settings.max_batch,
        consumer_max_fetch_size=8 << 20,
        # No fetch_min_bytes / fetch_max_wait: faust has no setting for them (it fixes 1 byte and
        # 1500 ms), and the kafka_fetch_* tuning the other consumers use measured no better here.
        # Set on faust's consumer (256 KiB / 75 ms, three quarters of latency_budget), a steady
        # 5,000 readings/s cost the worker 26.8-27.5 µs of CPU per reading against 25.4-30.3 with
        # faust's values, and idle 1.7% of a core against 0.9%. Earlier, live at 20,000/s: 0.009
        # CPU-s per 1,000 readings with faust's values, 0.020 with 256 KiB / 20 ms.
        stream_buffer_maxsize=4 * settings.max_chunks,  # counted in fetches (processors.batching)
        producer_acks=-1,
        producer_linger=0.005,
        producer_max_batch_size=1 << 20,
        stream_wait_empty=False,  # a batch cut short by a rebalance is replayed (at-least-once)
        ConsumerScheduler=ChunkScheduler.for_topics(sources),  # one event per fetch
    )
    deadletter = app.topic(settings.deadletter_topic, key_serializer="raw", value_serializer="raw")
    bodies: list[FunctionBody] = []
    emitters: list[WatermarkEmitter] = []
    runners: list[BatchRunner] = []
    for spec in registry.specs():
        bodies.append(spec.build(settings))
        sink = app.topic(spec.sink_topic(settings), key_serializer="raw", value_serializer="raw")
        emitters.append(
            WatermarkEmitter(
                app=app,
                sink=sink,
                progress=PartitionProgress(
                    source=spec.name, topic=spec.source_topic(settings), idle_after=settings.idle_after
                ),
                sink_topic=spec.sink_topic(settings),
                settings=settings,
            )
        )
        runner = BatchRunner(
            spec=spec,
            body=bodies[-1],
            sink=sink,
            deadletter=deadletter,
            settings=settings,
            metrics=metrics,
            emitter=emitters[-1],
        )
        runners.append(runner)
        # No acks: faust keeps no offsets of it, the runner commits them (processors.batching).
        source = app.topic(
            spec.source_topic(settings), key_serializer="raw", value_serializer=CHUNK_SERIALIZER, acks=False
        )
        app.agent(source, name=f"processors.{spec.name}")(runner.agent)

    ticks = [getattr(body, "tick") for body in bodies if callable(getattr(body, "tick", None))]  # noqa: B009
    stateful = [runner for runner in runners if runner.stateful is not None]
    _stateful_runners[app] = stateful

    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        for runner in runners:
            runner.revoked(revoked)

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]  # mode's stub wants sync

    async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        for runner in runners:
            runner.assigned(assigned)

    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]

    @app.timer(interval=settings.watermark_interval)  # type: ignore[untyped-decorator]
    async def detector_timers() -> None:
        for runner in stateful:
            await runner.on_timer()

    @app.timer(interval=settings.rules_poll_interval)  # type: ignore[untyped-decorator]
    async def tick_functions() -> None:
        for tick in ticks:
            tick()

    @app.timer(interval=settings.watermark_interval)  # type: ignore[untyped-decorator]
    async def emit_watermarks() -> None:
        for emitter in emitters:
            await emitter.emit()

    @app.timer(interval=30.0)  # type: ignore[untyped-decorator]
    async def report_metrics() -> None:
        log.info("processor_metrics", **metrics.snapshot())

    return app


_stateful_runners: weakref.WeakKeyDictionary[faust.App, list[BatchRunner]] = weakref.WeakKeyDictionary()


async def flush_state(app: faust.App) -> None:
    """On a clean stop, before the app stops: write the state of what was processed and commit it,
    so the next owner of the partitions replays nothing (:meth:`BatchRunner.flush`)."""
    for runner in _stateful_runners.get(app, []):
        async with runner.turn:
            await runner.flush()
            await runner.settle()


class BatchRunner:
    """Runs one function over batches of its source topic."""

    def __init__(
        self,
        *,
        spec: FunctionSpec,
        body: FunctionBody,
        sink: Any,
        deadletter: Any,
        settings: ProcessorSettings,
        metrics: Metrics,
        emitter: WatermarkEmitter | None = None,
    ) -> None:
        self.spec = spec
        self.body = body
        # Checked once: isinstance against a runtime-checkable Protocol costs 20-50 µs, and a
        # batch asked it three times.
        self.stateful: Stateful | None = body if isinstance(body, Stateful) else None
        self.sink = sink
        self.deadletter = deadletter
        self.settings = settings
        self.metrics = metrics
        self.emitter = emitter
        self.source = spec.source_topic(settings)
        self.sink_topic = spec.sink_topic(settings)
        self.log = log.bind(function=spec.name, topic=self.source)
        # A batch and the timer take turns: the state one writes must not carry the other's
        # changes before that one's alerts are acked.
        self.turn = asyncio.Lock()
        self.traces = tracing.TraceSource(ratio=settings.trace_sample_ratio)
        self.tracing = tracing.configure("processors")
        # A stateful function's processed batches whose state is not written yet: their offsets
        # are not committed until it is (:meth:`flush`).
        self.held: list[Chunk] = []
        self.commits = Commits()
        self.persisted_at = time.monotonic()
        self.writing: asyncio.Future[None] | None = None  # the state write under way (flush)
        self.output = BatchSender(sink, self.sink_topic)
        self.loading: asyncio.Future[None] | None = None  # the state read started at an assignment

    async def agent(self, stream: Any) -> None:
        started = time.monotonic()
        first = True
        # A batch held without its commit for stall_timeout (a function or a send that never
        # returns) ends the process with code 3, and `thermoflow run` starts it again.
        watchdog = Watchdog(component=f"processor.{self.spec.name}", stall_after=self.settings.stall_timeout)
        watchdog.start()
        try:
            # Each event is one fetch's chunks of records, one per partition (processors.batching).
            async for events in take_batches(
                stream, self.settings.max_chunks, within=self.settings.batch_wait
            ):
                chunks: list[Chunk] = [chunk for event in events for chunk in event.value]
                records = list(itertools.chain.from_iterable(chunk for _, chunk in chunks))
                partitions = np.repeat(
                    np.fromiter((tp.partition for tp, _ in chunks), np.int64, len(chunks)),
                    np.fromiter((len(chunk) for _, chunk in chunks), np.int64, len(chunks)),
                )
                ends = {tp.partition: chunk[-1].offset + 1 for tp, chunk in chunks}  # chunks in offset order
                watchdog.waiting(len(records))
                async with self.turn:
                    await self.process(records, partitions, ends)
                    if self.stateful is not None:
                        self.held += chunks
                        if time.monotonic() - self.persisted_at >= self.settings.state_interval:
                            await self.flush()
                if self.stateful is None:
                    self.commits.done(chunks)  # output durable: commit it all
                    await self.commits.commit(stream.app.consumer)
                watchdog.progress()
                watchdog.waiting(0)
                if first:
                    first = False
                    self.log.info(
                        "first_batch_processed", seconds_since_agent_start=time.monotonic() - started
                    )
        finally:
            watchdog.stop()

    async def process(
        self, records: Sequence[Any], partitions: I64 | None = None, ends: Mapping[int, int] | None = None
    ) -> None:
        """Decode, call, send; returns only once every output record is acked by Kafka.

        ``partitions`` is each record's partition, for records that carry none (aiokafka's raw
        records: :func:`~thermoflow.aiokafka_fetch.deliver_raw_records`); ``ends`` the offset
        after each partition's last record (:meth:`WatermarkEmitter.processed`).
        """
        started = time.perf_counter()
        started_ns = time.time_ns()
        batch, rejects = decode_batch(self.source, records, partitions)
        deliveries: list[asyncio.Future[Any]] = []
        spans: list[Span] = []
        for reject in rejects:
            deliveries.append(await self._dead_letter(reject.record, reject.error))
        if len(batch) and self.stateful is not None:
            await self.stateful.load(set(np.unique(batch.partition).tolist()))
        if len(batch):
            try:
                emits = await call_with_retries(
                    self.body,
                    batch,
                    attempts=self.settings.function_retries,
                    backoff=self.settings.function_backoff,
                )
            except FunctionFailed as exc:
                self.log.error(
                    "batch_dead_lettered",
                    reason=str(exc),
                    records=len(batch),
                    partition=int(batch.partition[0]),
                    offset=int(batch.offset[0]),
                )
                emits = []
                reason = f"function {self.spec.name!r} {exc}"
                for record, partition in zip(batch.records, batch.partition.tolist(), strict=True):
                    deliveries.append(await self._dead_letter(record, reason, partition=partition))
            emits, spans = self.traced(emits, batch, started_ns=started_ns)
            deliveries += await self.output.send(emits)
            self.metrics.count("emitted", len(emits))
        try:
            await asyncio.gather(*deliveries)
        finally:
            for span in spans:
                span.end()
        if self.emitter is not None:  # only now: the watermark must land behind the batch's alerts
            self.emitter.processed(records, batch, partitions, ends)
            await self.emitter.emit()
        self.metrics.count("readings", len(batch))
        self.metrics.count("dead_letters", len(rejects), reason="decode")
        self.metrics.observe("batch", time.perf_counter() - started)

    def traced(
        self, emits: Sequence[Emit], batch: ReadingBatch | None, *, started_ns: int
    ) -> tuple[list[Emit], list[Span]]:
        """The events with their traceparent: their reading's (found by partition and offset in
        ``batch``), else a new trace's; and the spans started for the sampled ones."""
        if not emits:
            return [], []
        parents = _reading_traceparents(emits, batch) if batch is not None and len(batch) else {}
        traced: list[Emit] = []
        spans: list[Span] = []
        for emit in emits:
            if tracing.header_of(emit.headers) is not None:
                traced.append(emit)
                continue
            traceparent = parents.get((emit.partition, emit.offset))
            if tracing.parse(traceparent) is None:  # none, or not a valid one: a new trace
                traceparent = self.traces.new()
            span = self.tracing.start(
                f"processors.{self.spec.name}",
                traceparent,
                start_time=started_ns,
                attributes={
                    "thermoflow.device_id": emit.key,
                    "messaging.destination.name": self.sink_topic,
                },
            )
            if span is not None:
                spans.append(span)
                traceparent = tracing.traceparent_of(span)
            assert traceparent is not None
            traced.append(dataclasses.replace(emit, headers=(*emit.headers, (tracing.HEADER, traceparent))))
        return traced, spans

    async def flush(self) -> None:
        """Start writing the state the held batches (and timer ticks) changed; their offsets are
        committed once it is stored.

        Called after a batch or a timer tick once ``state_interval`` has passed since the last
        write, so the stored state lags the processed readings by at most ``state_interval`` plus
        a tick (``watermark_interval``) or a batch, and the committed offsets
        never pass the stored state: a crash replays the batches since the last flush from the
        state that was stored before them, and sends the same alert ids again. Stored state is
        never ahead of the alerts it implies: every held batch's output was acked before it was
        held, and the state is taken here, before the next batch.

        The write waits for its acks while the next batches are processed: it was in their
        path, up to 76 ms every second at 20,000 readings/s. It first waits for the write before
        it, so one is under way at a time, the commits stay in order, a write that failed
        raises here, and one that never returns stalls the batches (the watchdog's to see).
        """
        assert self.stateful is not None
        await self.settle()
        held, self.held = self.held, []
        write = self.stateful.persist()
        self.persisted_at = time.monotonic()
        self.writing = asyncio.ensure_future(self._commit_when_stored(write, held))

    async def settle(self) -> None:
        """Wait for the state write under way, if any, and its commit; raises what it raised."""
        writing, self.writing = self.writing, None
        if writing is not None:
            await writing

    async def _commit_when_stored(self, write: Awaitable[None], held: list[Chunk]) -> None:
        await write
        if held:
            consumer = self.sink.app.consumer
            assigned = consumer.assignment()  # a batch held while its partition was revoked stays uncommitted
            self.commits.done(chunk for chunk in held if chunk[0] in assigned)
            await self.commits.commit(consumer)

    def assigned(self, assigned: set[TP]) -> None:
        """After a rebalance (and at the start): a stateful function reads its partitions' state
        now, not when their first batch comes, which would wait for it (the state topic's reader
        to start and read, about half a second, a latency that every reading of that batch took)."""
        partitions = {tp.partition for tp in assigned if tp.topic == self.source}
        if self.stateful is None or not partitions:
            return
        self.loading = asyncio.ensure_future(self.stateful.load(partitions))
        self.loading.add_done_callback(self._loaded)

    def _loaded(self, loading: asyncio.Future[None]) -> None:
        if not loading.cancelled() and loading.exception() is not None:  # a batch's load tries again
            self.log.warning("state_preload_failed", error=repr(loading.exception()))

    def revoked(self, revoked: set[TP]) -> None:
        """Partitions of the source topic went elsewhere: their offsets are no longer ours to
        commit, and a stateful function forgets their state.

        Their held batches are never committed: the new owner reads them again from the committed
        offsets, with the state stored before them (the same alerts, the same ids).
        """
        self.commits.forget(revoked)
        partitions = {tp.partition for tp in revoked if tp.topic == self.source}
        self.held = [chunk for chunk in self.held if chunk[0] not in revoked]
        if partitions and self.stateful is not None:
            self.stateful.revoked(partitions)
            self.log.info("state_revoked", partitions=sorted(partitions))

    async def on_timer(self) -> None:
        """A stateful function's timer: what it detects from time alone, sent like a batch's output."""
        stateful = self.stateful
        if stateful is None:
            return
        caught_up = self.emitter.caught_up if self.emitter is not None else (lambda partition: False)
        app = self.sink.app
        async with self.turn:
            if app.should_stop:  # the producer may be gone: what the timer would find, the next owner finds
                return
            started_ns = time.time_ns()
            emits, spans = self.traced(stateful.on_timer(now=time.time(), caught_up=caught_up), None,
                                       started_ns=started_ns)  # fmt: skip
            try:
                await asyncio.gather(*await self.output.send(emits))
            except faust.exceptions.NotReady:  # stopping under way: nothing was persisted, all is found again
                self.log.info("timer_stopped", unsent=len(emits))
                return
            finally:
                for span in spans:
                    span.end()
            if time.monotonic() - self.persisted_at >= self.settings.state_interval:
                await self.flush()  # what the last batches held, when no batch came to do it
        self.metrics.count("emitted", len(emits))

    async def _dead_letter(
        self, record: KafkaRecord, reason: str, *, partition: int | None = None
    ) -> asyncio.Future[Any]:
        """Send ``record`` to the dead-letter topic; ``partition`` for a raw record, which has none."""
        partition = record.partition if partition is None else partition
        source = kafka_source(topic=self.source, partition=partition, offset=record.offset)
        self.log.warning(
            "dead_letter",
            reason=reason,
            partition=partition,
            offset=record.offset,
            device_id=record.key.decode("utf-8", "replace") if record.key else None,
        )
        letter = DeadLetter(error=reason, stage="processors", source=source, failed_at=time.time())
        return await self.deadletter.send(  # type: ignore[no-any-return]
            key=record.key, value=record.value, headers=dead_letter_headers(letter)
        )


class BatchSender:
    """Sends a batch's events to the sink topic as one Kafka producer batch per partition.

    faust's ``topic.send`` costs a faust message, a future and an aiokafka record per event (16%
    of a worker's time with every detector on); here a batch's events cost one ``send_batch``
    (one future) per partition. The partition is the one aiokafka's default partitioner picks
    for the key (murmur2, cached per key: it is pure Python), so a device's alerts land where
    they always did, in the order they were emitted.
    """

    def __init__(self, sink: Any, topic: str) -> None:
        self.sink = sink
        self.topic = topic
        self._partitions = 0
        self._partition_of: dict[bytes, int] = {}

    async def send(self, emits: Sequence[Emit]) -> list[asyncio.Future[Any]]:
        """Send ``emits``; the futures of their batches' acks (raises faust's NotReady when stopping)."""
        if not emits:
            return []
        producer = self.sink.app.producer._ensure_producer()  # faust's aiokafka producer, started
        count = len(await producer.partitions_for(self.topic))
        if count != self._partitions:
            self._partitions, self._partition_of = count, {}
        records = []
        for emit in emits:
            key = emit.key.encode()
            partition = self._partition_of.get(key)
            if partition is None:
                partition = self._partition_of[key] = kafka.partition_for(key, count)
            records.append((partition, key, _encoder.encode(emit.event), list(emit.headers)))
        futures = await kafka.send_batches(producer, self.topic, records)
        if log.is_enabled_for(logging.DEBUG):
            for emit in emits:
                log.debug("emitted", device_id=emit.key, partition=emit.partition, offset=emit.offset,
                          trace_id=tracing.trace_id_of(tracing.header_of(emit.headers)))  # fmt: skip
        return futures


def _reading_traceparents(
    emits: Sequence[Emit], batch: ReadingBatch
) -> dict[tuple[int | None, int | None], bytes | None]:
    """The traceparent header of each event's reading, by (partition, offset): found with one
    vectorized pass over the batch's positions, then a look at the few records that match."""
    wanted = {(e.partition, e.offset) for e in emits if e.partition is not None and e.offset is not None}
    if not wanted:
        return {}
    positions = (batch.partition.astype(np.int64) << 40) | batch.offset.astype(np.int64)
    keys = np.fromiter(((p << 40) | o for p, o in wanted), dtype=np.int64, count=len(wanted))
    found: dict[tuple[int | None, int | None], bytes | None] = {}
    for index in np.flatnonzero(np.isin(positions, keys)).tolist():
        record = batch.records[index]
        position = (int(batch.partition[index]), int(batch.offset[index]))
        found[position] = tracing.header_of(getattr(record, "headers", None))
    return found


class WatermarkEmitter:
    """Sends one function's source-partition watermarks to every partition of its sink topic.

    Called after each batch and by a timer; sends at most once per ``watermark_interval``. A
    previous round not yet acked by then counts as trouble reaching Kafka
    (:meth:`PartitionProgress.disturbed`), so partitions do not turn idle through an outage.
    """

    COUNTS_MAX_AGE = 60.0  # seconds before the topics' partition counts are asked for again

    def __init__(
        self,
        *,
        app: Any,
        sink: Any,
        sink_topic: str,
        progress: PartitionProgress,
        settings: ProcessorSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.sink = sink
        self.sink_topic = sink_topic
        self.progress = progress
        self.settings = settings
        self.clock = clock
        self.log = log.bind(function=progress.source, topic=progress.topic)
        self._last = float("-inf")
        self._inflight: asyncio.Future[Any] | None = None
        self._counts: tuple[int, int] | None = None  # (source partitions, sink partitions)
        self._counts_at = float("-inf")
        self._counting: asyncio.Task[None] | None = None
        self._disturbed_at = float("-inf")  # the last time Kafka did not ack a watermark round

    def processed(
        self,
        records: Sequence[Any],
        batch: ReadingBatch,
        partitions: I64 | None = None,
        ends: Mapping[int, int] | None = None,
    ) -> None:
        """A batch's records are done and its output acked: move their partitions forward.

        ``partitions``: each record's, for records that carry none (raw aiokafka records).
        ``ends``: the offset after each partition's last record, when the caller knows it (from
        the chunks), so the records' offsets need not be read one by one.
        """
        now = self.clock()
        event_time = latest_per_partition(batch.partition, batch.event_ts)
        if ends is None:
            count = len(records)  # the records' partitions and offsets read in C, not a Python step each
            if partitions is None:
                partitions = np.fromiter(map(_partition, records), dtype=np.int64, count=count)
            offsets = np.fromiter(map(_offset, records), dtype=np.float64, count=count)  # exact below 2**53
            ends = {
                partition: int(last) + 1
                for partition, last in latest_per_partition(partitions, offsets).items()
            }
        for partition, end in ends.items():
            self.progress.processed(partition, event_time=event_time.get(partition), next_offset=end, now=now)

    async def emit(self) -> None:
        now = self.clock()
        if now - self._last < self.settings.watermark_interval * 0.9:
            return
        self._last = now
        self._refresh_counts(now)
        if self._inflight is not None:
            if not self._inflight.done():
                self.progress.disturbed(now=now)
                self._disturbed_at = now
                self.log.warning("watermarks_unacked", seconds=self.settings.watermark_interval)
                return
            if not self._inflight.cancelled() and self._inflight.exception() is not None:
                self.progress.disturbed(now=now)
                self._disturbed_at = now
                self.log.warning("watermarks_failed", error=repr(self._inflight.exception()))
            self._inflight = None
        if self._counts is None:
            return
        source_partitions, sink_partitions = self._counts
        owned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.progress.topic}
        self.progress.assign(owned, now=now)
        # The consumer's position (a call into faust's consumer thread) only stands in for the
        # offset processed when nothing was processed since the assignment.
        positions = {p: await self._position(p) for p in owned if self.progress.next_offset(p) is None}
        marks = self.progress.marks(
            partitions=source_partitions,
            caught_up=lambda p, next_offset: self._caught_up(p, next_offset, positions.get(p)),
            now=now,
        )
        # One producer batch per sink partition (faust's send per record and partition was 2% of
        # a worker's CPU at a steady 5,000 readings/s); NotReady when stopping, as faust's send.
        values = [encode(mark) for mark in marks]
        records = [
            (partition, None, value, WATERMARK_HEADERS)
            for partition in range(sink_partitions)
            for value in values
        ]
        futures = await kafka.send_batches(
            self.sink.app.producer._ensure_producer(), self.sink_topic, records
        )
        if futures:
            self._inflight = asyncio.ensure_future(asyncio.gather(*futures))
            self.log.debug("watermarks_sent", marks=len(marks), partitions=sink_partitions)

    def caught_up(self, partition: int) -> bool:
        """Whether everything in ``partition`` up to its end has been processed, as far as a
        Kafka that answered throughout the last ``ingest_silent_after`` seconds can tell: through
        an outage the partition's end is stale, and the silence is the pipeline's, not the fleet's."""
        if self.clock() - self._disturbed_at < self.settings.ingest_silent_after:
            return False
        return self._caught_up(partition, self.progress.next_offset(partition), None)

    def _caught_up(self, partition: int, next_offset: int | None, position: int | None) -> bool:
        """Nothing left to process: the offset after the last one processed (else the consumer's
        position, when nothing was processed since the assignment) is at the partition's end."""
        with contextlib.suppress(Exception):  # not assigned any more, or not known yet
            end = self.app.consumer.highwater(TP(self.progress.topic, partition))
            done = next_offset if next_offset is not None else position
            return end is not None and done is not None and done >= end
        return False

    async def _position(self, partition: int) -> int | None:
        with contextlib.suppress(Exception):  # faust's consumer may be rebalancing: unknown then
            position = await self.app.consumer.position(TP(self.progress.topic, partition))
            return int(position) if position is not None else None
        return None

    def _refresh_counts(self, now: float) -> None:
        """Ask Kafka for the partition counts in the background when they are missing or old."""
        if now - self._counts_at < self.COUNTS_MAX_AGE or (self._counting and not self._counting.done()):
            return
        self._counts_at = now
        self._counting = asyncio.ensure_future(self._count_partitions())

    async def _count_partitions(self) -> None:
        topics = [self.progress.topic, self.sink_topic]
        try:
            counts = await kafka.partition_counts(self.settings, topics, timeout=10.0)
        except (KafkaError, OSError) as exc:
            self._counts_at = float("-inf")  # ask again at the next round
            self.log.warning("partition_count_failed", error=repr(exc))
            return
        if all(counts.get(topic) for topic in topics):
            self._counts = (counts[topics[0]], counts[topics[1]])
        else:
            self._counts_at = float("-inf")
