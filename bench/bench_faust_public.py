"""Can faust's public API feed the processors? One worker per variant, same topic, same run.

    .venv/bin/python -m bench.bench_faust_public [--readings 1000000] [--partitions 12]
        [--max-seconds 15] [--rounds 2] [--variants process,take,...] [--profile-dir DIR]

Kafka comes from THERMOFLOW_KAFKA_BOOTSTRAP. The run pre-fills its own topic
``test-faustpub-<hex>-readings`` (as bench/bench_processors.py does: 1% of readings breach a
rule), then runs each variant as a worker process in a consumer group of its own. Every
variant does the same work per batch, ``thermoflow.processors.app.BatchRunner.process``: decode with
``thermoflow.processors.columns``, the threshold check, send the alerts, wait until Kafka acked them;
only the way records reach the agent differs:

process         ``thermoflow process`` itself: ``thermoflow.processors.batching``'s ``ChunkScheduler`` (the
                ``scheduler`` variant below, made the product, plus its commit rounds after each
                batch). Before that adapter it was a copy of faust's private
                ``Consumer._drain_messages``; the study's figures compared against that copy.
take            public: ``stream.take(max_batch, within=max_wait)`` over raw bytes values. Not in
                the default run since the detectors keep state per partition: ``take`` yields
                values only, so its worker waits for ever on the state of partition -1.
take_events     public: ``stream.take_events(max_batch, within=max_wait)``; records are the events'
                messages (key, value, partition, offset).
take_events_big take_events with ``stream_buffer_maxsize=131072`` (faust's own advice for
                throughput) and ``broker_max_poll_records=None``.
noack_events    public, the per-event floor: ``stream.noack().events()`` gathered into batches by
                hand, each event acked after its batch's output is durable (no ``within``: a
                diagnostic, not a design).
scheduler       public settings only: a ``ConsumerScheduler`` that yields one aiokafka
                ``ConsumerRecord`` per fetched partition chunk (its value the chunk, its offset the
                chunk's last) and a pass-through codec; faust's own drain loop registers the
                offsets in between as a gap, as it does for compacted topics. No private member
                is touched, but it leans on what faust does, not what it promises (the drain
                loop's gap rule, getmany reading ConsumerRecord fields), so it needs the same
                pin and start-up check as the copy. This prototype lacks the product's commit
                rounds (``ChunkScheduler.settle``): faust's gap includes the delivered offset,
                so each commit round moves a partition on by one chunk only, and its
                committed offsets (what this script measures) lag. Its items are partition
                chunks, and it takes ``max_chunks`` of them per batch; the product's items are
                whole fetches (every partition's chunk) and ``max_chunks`` counts those, so
                this prototype's batches are up to a fetch's partition count smaller.

Readings/s depend on what else the 2 shared cores run; compare the ratios and CPU-s within
one run. The worker's CPU per reading is the steadier figure.

Per variant it prints readings/s (committed offsets polled every 0.1 s, from the first commit
to the last change), CPU-seconds of the worker process per 1,000 readings (/proc, all its
threads), and the ratio to ``process``. With ``--profile-dir``, py-spy samples each worker
for a few seconds (those runs' figures include py-spy's overhead on a 2-core machine).
The topics are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from bench.bench_processors import prefill, readings
from bench.common import cpu_seconds
from thermoflow import kafka
from thermoflow.observe import committed
from thermoflow.settings import ThermoflowSettings

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("process", "take", "take_events", "take_events_big", "noack_events", "scheduler")
CHUNK_SERIALIZER = "bench-faustpub-chunk"


# -- the worker side: one faust app per process ---------------------------------------------------


def chunk_scheduler(topics: frozenset[str]) -> type[Any]:
    """A ``ConsumerScheduler`` (faust setting) handing on each partition's fetched chunk as one record."""
    from aiokafka.structs import ConsumerRecord
    from faust.transport.utils import DefaultSchedulingStrategy

    def as_record(chunk: list[Any]) -> Any:
        last = chunk[-1]
        return ConsumerRecord(
            topic=last.topic,
            partition=last.partition,
            offset=last.offset,
            timestamp=last.timestamp,
            timestamp_type=last.timestamp_type,
            key=None,
            value=chunk,
            checksum=None,
            serialized_key_size=0,
            serialized_value_size=sum(r.serialized_value_size for r in chunk),
            headers=(),
        )

    class ChunkScheduler(DefaultSchedulingStrategy):
        def iterate(self, records: Mapping[Any, list[Any]]) -> Iterator[tuple[Any, Any]]:
            others = {tp: chunk for tp, chunk in records.items() if tp.topic not in topics}
            for tp, chunk in records.items():
                if chunk and tp.topic in topics:
                    if chunk[0].offset == 1 and len(chunk) > 1:
                        # faust's drain loop adds a gap only `if gap > 1 and r_offset`: after a
                        # lone record at offset 0, r_offset is 0 and a chunk 1..n would get no
                        # gap, so its commit would stall for good. Offset 1 alone sets r_offset 1.
                        yield tp, as_record(chunk[:1])
                        chunk = chunk[1:]
                    yield tp, as_record(chunk)
            if others:
                yield from super().iterate(others)

    return ChunkScheduler


def run_public_worker(variant: str) -> None:
    """Run one public-API variant until SIGTERM (started by this script as a child process)."""
    import faust
    from faust.serializers import codecs

    from thermoflow.component import tune_gc
    from thermoflow.logs import configure_logging
    from thermoflow.metrics import Metrics
    from thermoflow.processors.app import BatchRunner
    from thermoflow.processors.columns import RawRecord
    from thermoflow.processors.runtime import import_functions, registry
    from thermoflow.processors.settings import ProcessorSettings
    from thermoflow.processors.worker import ensure_state_topic

    class PassThrough(codecs.Codec):
        def _loads(self, s: Any) -> Any:
            return s

        def _dumps(self, s: Any) -> Any:
            return s

    codecs.register(CHUNK_SERIALIZER, PassThrough())

    settings = ProcessorSettings()
    configure_logging(level=settings.log_level, component="processors")  # as processors.cli does
    asyncio.run(ensure_state_topic(settings))  # the detectors' state, as `thermoflow process` makes it
    import_functions([])
    spec = registry.specs()[0]
    extra: dict[str, Any] = {"broker_max_poll_records": settings.max_batch}
    if variant in ("take_events_big", "noack_events"):
        extra = {"broker_max_poll_records": None, "stream_buffer_maxsize": 131_072}
    elif variant == "scheduler":
        extra["stream_buffer_maxsize"] = 4 * settings.max_chunks  # counted in partition chunks here
        extra["ConsumerScheduler"] = chunk_scheduler(frozenset({settings.readings_topic}))
    app = faust.App(
        settings.processor_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        autodiscover=False,
        datadir=tempfile.mkdtemp(prefix="bench-faustpub-"),
        store="memory://",
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(1.0, settings.session_timeout / 6),
        broker_commit_every=max(settings.max_batch, 10_000),
        consumer_max_fetch_size=8 << 20,
        producer_acks=-1,
        producer_linger=0.005,
        producer_max_batch_size=1 << 20,
        stream_wait_empty=False,
        **extra,
    )
    runner = BatchRunner(
        spec=spec,
        body=spec.build(settings),
        sink=app.topic(settings.alerts_topic, key_serializer="raw", value_serializer="raw"),
        deadletter=app.topic(settings.deadletter_topic, key_serializer="raw", value_serializer="raw"),
        settings=settings,
        metrics=Metrics("processors"),
    )
    value_serializer = CHUNK_SERIALIZER if variant == "scheduler" else "raw"
    source = app.topic(settings.readings_topic, key_serializer="raw", value_serializer=value_serializer)
    max_batch, max_wait = settings.max_batch, settings.batch_wait

    async def take(stream: Any) -> None:
        async for values in stream.take(max_batch, within=max_wait):
            # take yields values only: where each came from is lost (the alerts' log fields).
            await runner.process([RawRecord(None, value, -1, -1) for value in values])

    async def take_events(stream: Any) -> None:
        async for events in stream.take_events(max_batch, within=max_wait):
            await runner.process([event.message for event in events])

    async def noack_events(stream: Any) -> None:
        batch: list[Any] = []
        async for event in stream.noack().events():
            batch.append(event)
            if len(batch) >= max_batch:
                await runner.process([e.message for e in batch])
                for e in batch:
                    e.ack()
                batch.clear()

    async def scheduler(stream: Any) -> None:
        async for events in stream.take_events(settings.max_chunks, within=max_wait):
            await runner.process([record for event in events for record in event.value])

    bodies = {
        "take": take,
        "take_events": take_events,
        "take_events_big": take_events,
        "noack_events": noack_events,
        "scheduler": scheduler,
    }
    app.agent(source, name=f"bench.{variant}")(bodies[variant])
    # As processors.worker.run_worker starts it.
    worker = faust.Worker(
        app, loglevel=settings.log_level, quiet=True, override_logging=False, redirect_stdouts=False
    )
    worker.spinner = None
    tune_gc()
    worker.execute_from_commandline()


# -- the measuring side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    variant: str
    rate: float  # readings/s
    cpu_per_1000: float  # CPU-seconds of the worker process per 1,000 readings
    committed: int


async def measure(
    settings: ThermoflowSettings,
    *,
    variant: str,
    command: list[str],
    env: dict[str, str],
    group: str,
    topic: str,
    total: int,
    max_seconds: float,
    log_path: Path,
    profile_dir: Path | None,
) -> Result:
    """Start a worker; its rate and CPU from its first commit to the last change seen."""
    started = time.time()
    spy: asyncio.subprocess.Process | None = None
    with log_path.open("w") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT
        )
        try:
            first: tuple[float, int, float] | None = None
            last: tuple[float, int, float] | None = None
            while time.time() - started < 120 + max_seconds:
                done = await committed(settings, group, topic)
                now, cpu = time.time(), cpu_seconds(proc.pid)
                if done and first is None:
                    first = (now, done, cpu)
                    if profile_dir is not None:
                        spy = await asyncio.create_subprocess_exec(
                            *(str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(proc.pid)),
                            *("-d", "6", "-r", "250", "-f", "raw", "--nonblocking"),
                            *("-o", str(profile_dir / f"{variant}.txt")),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                if first is not None and (last is None or done > last[1]):
                    last = (now, done, cpu)
                if done >= total or (first and now - first[0] >= max_seconds):
                    break
                if proc.returncode is not None:
                    raise RuntimeError(f"{variant}: worker exited with {proc.returncode}; see {log_path}")
                await asyncio.sleep(0.1)
        finally:
            if spy is not None:
                await asyncio.wait_for(spy.wait(), timeout=60)
            if proc.returncode is None:
                proc.terminate()
            await asyncio.wait_for(proc.wait(), timeout=60)
    if first is None or last is None or last[0] == first[0]:
        raise RuntimeError(f"{variant}: no progress measured; see {log_path}")
    readings_done = last[1] - first[1]
    return Result(
        variant=variant,
        rate=readings_done / (last[0] - first[0]),
        cpu_per_1000=(last[2] - first[2]) / readings_done * 1000,
        committed=last[1],
    )


async def delete_topics(settings: ThermoflowSettings, names: Sequence[str]) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_options())
    await admin.start()
    try:
        await admin.delete_topics(list(names))
    finally:
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--max-seconds", type=float, default=15.0, help="measuring window per variant")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every variant (median reported)")
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "take"))
    parser.add_argument("--profile-dir", type=Path, default=None, help="py-spy raw profiles go here")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)

    settings = ThermoflowSettings()
    run = f"test-faustpub-{uuid.uuid4().hex[:8]}"
    source, alerts, deadletter = f"{run}-readings", f"{run}-alerts", f"{run}-dlq"
    logs = Path(tempfile.mkdtemp(prefix="bench-faustpub-"))
    await kafka.ensure_topics(settings, {source: args.partitions, alerts: 6, deadletter: 1})
    try:
        batch = readings(args.readings, devices=args.devices, breach_rate=0.01)
        seconds = await prefill(settings, source, batch, args.partitions)
        del batch
        print(f"pre-filled {source}: {args.readings:,} readings in {seconds:.1f}s", flush=True)
        env = {
            **os.environ,
            "THERMOFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "THERMOFLOW_READINGS_TOPIC": source,
            "THERMOFLOW_ALERTS_TOPIC": alerts,
            "THERMOFLOW_DEADLETTER_TOPIC": deadletter,
            "THERMOFLOW_COMMIT_INTERVAL": "0.2",  # as bench_processors: "all committed" is seen soon
            "THERMOFLOW_HTTP_PORT": "0",  # no /metrics: the default port may be another run's
        }
        results: dict[str, list[Result]] = {v: [] for v in variants}
        for round_ in range(args.rounds):
            for variant in variants:
                group = f"{run}-{variant}-{round_}"
                command = (
                    [sys.executable, "-m", "thermoflow", "process"]
                    if variant == "process"
                    else [sys.executable, "-m", "bench.bench_faust_public", "--worker", variant]
                )
                result = await measure(
                    settings,
                    variant=variant,
                    command=command,
                    env={**env, "THERMOFLOW_PROCESSOR_GROUP": group},
                    group=group,
                    topic=source,
                    total=args.readings,
                    max_seconds=args.max_seconds,
                    log_path=logs / f"{variant}-{round_}.log",
                    profile_dir=args.profile_dir,
                )
                results[variant].append(result)
                print(
                    f"  round {round_ + 1} {variant:<16} {result.rate:>10,.0f} readings/s  "
                    f"{result.cpu_per_1000:.4f} CPU-s/1000  ({result.committed:,} committed)",
                    flush=True,
                )
        rate = {v: statistics.median(r.rate for r in rs) for v, rs in results.items()}
        cpu = {v: statistics.median(r.cpu_per_1000 for r in rs) for v, rs in results.items()}
        baseline = rate.get("process")
        print(f"\n{'variant':<16} {'readings/s':>12} {'CPU-s/1000':>11} {'vs process':>10}")
        for variant in variants:
            ratio = f"{rate[variant] / baseline:.2f}x" if baseline else "-"
            print(f"{variant:<16} {rate[variant]:>12,.0f} {cpu[variant]:>11.4f} {ratio:>10}")
        print(f"worker logs: {logs}")
    finally:
        # Each group's worker made its detector state topic.
        states = [f"{run}-{v}-{r}-device-state" for r in range(args.rounds) for v in variants]
        with contextlib.suppress(Exception):
            await delete_topics(settings, [source, alerts, deadletter, *states])


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        run_public_worker(sys.argv[2])
    else:
        asyncio.run(main())
