"""The faust app: each registered function runs as an agent over
``stream.take_events(max_chunks, within=max_wait)``, where each event is one partition's
fetched chunk of records (see :mod:`processors.batching` for why).

Per batch: decode (msgspec, columns) -> dead-letter the undecodable records -> call the
function (retried with backoff; a batch that keeps failing is dead-lettered whole) -> send
its events to the sink -> wait until Kafka has acked every record sent. Only then does the
agent return to ``take_events``, which acks the batch's events; faust commits acked offsets
(after flushing its producer) every ``broker_commit_interval``. So nothing is committed
before its output is durable: at-least-once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
import msgspec

from processors.batching import BATCH_SERIALIZER, BatchingApp
from processors.codec import KafkaRecord, decode_batch
from processors.runtime import FunctionBody, FunctionFailed, FunctionSpec, Registry, call_with_retries
from processors.settings import ProcessorSettings
from thermoflow.events import DeadLetter, dead_letter_headers, kafka_source
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics

log = get_logger(__name__)
_encoder = msgspec.json.Encoder()


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
) -> BatchingApp:
    """A faust app running every function of ``registry``; one per worker process."""
    app = BatchingApp(
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
        stream_buffer_maxsize=4 * settings.max_chunks,  # counted in partition chunks (processors.batching)
        producer_acks=-1,
        producer_linger=0.005,
        producer_max_batch_size=1 << 20,
        stream_wait_empty=False,  # a batch cut short by a rebalance is replayed (at-least-once)
    )
    deadletter = app.topic(settings.deadletter_topic, key_serializer="raw", value_serializer="raw")
    app.batch_topics = frozenset(spec.source_topic(settings) for spec in registry.specs())
    app.fetch_min_bytes = settings.kafka_fetch_min_bytes
    app.fetch_max_wait_ms = round(settings.kafka_fetch_wait * 1000)
    bodies: list[FunctionBody] = []
    for spec in registry.specs():
        bodies.append(spec.build(settings))
        runner = BatchRunner(
            spec=spec,
            body=bodies[-1],
            sink=app.topic(spec.sink_topic(settings), key_serializer="raw", value_serializer="raw"),
            deadletter=deadletter,
            settings=settings,
            metrics=metrics,
        )
        source = app.topic(
            spec.source_topic(settings), key_serializer="raw", value_serializer=BATCH_SERIALIZER
        )
        app.agent(source, name=f"processors.{spec.name}")(runner.agent)

    ticks = [getattr(body, "tick") for body in bodies if callable(getattr(body, "tick", None))]  # noqa: B009

    @app.timer(interval=settings.rules_poll_interval)  # type: ignore[untyped-decorator]
    async def tick_functions() -> None:
        for tick in ticks:
            tick()

    @app.timer(interval=30.0)  # type: ignore[untyped-decorator]
    async def report_metrics() -> None:
        log.info("processor_metrics", **metrics.snapshot())

    return app


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
    ) -> None:
        self.spec = spec
        self.body = body
        self.sink = sink
        self.deadletter = deadletter
        self.settings = settings
        self.metrics = metrics
        self.source = spec.source_topic(settings)
        self.log = log.bind(function=spec.name, topic=self.source)

    async def agent(self, stream: Any) -> None:
        started = time.monotonic()
        first = True
        # Each event is one partition's fetched chunk of records (processors.batching).
        async for events in stream.take_events(self.settings.max_chunks, within=self.settings.max_wait):
            await self.process([record for event in events for record in event.value])
            if first:
                first = False
                self.log.info("first_batch_processed", seconds_since_agent_start=time.monotonic() - started)

    async def process(self, records: Sequence[KafkaRecord]) -> None:
        """Decode, call, send; returns only once every output record is acked by Kafka."""
        started = time.perf_counter()
        batch, rejects = decode_batch(self.source, records)
        deliveries: list[asyncio.Future[Any]] = []
        for reject in rejects:
            deliveries.append(await self._dead_letter(reject.record, reject.error))
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
                for record in batch.records:
                    deliveries.append(await self._dead_letter(record, reason))
            for emit in emits:
                deliveries.append(
                    await self.sink.send(key=emit.key.encode(), value=_encoder.encode(emit.event))
                )
                self.log.debug("emitted", device_id=emit.key, partition=emit.partition, offset=emit.offset)
            self.metrics.count("emitted", len(emits))
        await asyncio.gather(*deliveries)
        self.metrics.count("readings", len(batch))
        self.metrics.count("dead_letters", len(rejects))
        self.metrics.observe("batch", time.perf_counter() - started)

    async def _dead_letter(self, record: KafkaRecord, reason: str) -> asyncio.Future[Any]:
        source = kafka_source(topic=self.source, partition=record.partition, offset=record.offset)
        self.log.warning(
            "dead_letter",
            reason=reason,
            partition=record.partition,
            offset=record.offset,
            device_id=record.key.decode("utf-8", "replace") if record.key else None,
        )
        letter = DeadLetter(error=reason, stage="processors", source=source, failed_at=time.time())
        return await self.deadletter.send(  # type: ignore[no-any-return]
            key=record.key, value=record.value, headers=dead_letter_headers(letter)
        )
