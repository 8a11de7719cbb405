"""Processors benchmark: the pure check, one worker end to end on real Kafka, cold start, a naive baseline.

    .venv/bin/python bench/bench_processors.py [--readings 2000000] [--partitions 12] [--baseline-seconds 20]
                                               [--previous REV]

Kafka comes from THERMOFLOW_KAFKA_BOOTSTRAP (default: the local stack, 127.0.0.1:9092).
It pre-fills a fresh topic with readings (1% of them breach a rule), then, in the same run:

1. the pure check (decode excluded) on 100,000-reading batches, readings/s;
2. `thermoflow process` (one worker process): consume -> decode -> check -> produce alerts,
   readings/s from the group's first commit until it has committed every reading, and the
   worker's CPU-seconds (all its threads, /proc) per 1,000 readings over the same span: the
   steadier figure on a shared machine. Twice: with the thresholds only (the shipped rules
   without their detector keys), then with every detector on (the shipped rules as they are:
   state read and written to Kafka, offline timer), and the ratio of the two;
3. cold start: seconds from starting that process to its first batch processed;
4. the baseline: a naive faust agent (one event at a time: decode, classify, send) over the
   same topic in its own consumer group, readings/s, and the ratio;
5. with ``--previous REV``, the same cases again on that revision's code (e.g. the commit
   before a change), and this code's ratio to it; ``--only thresholds|every`` runs one case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from thermoflow import kafka
from thermoflow.events import Reading, encode
from thermoflow.observe import committed
from thermoflow.processors.thresholds import ReadingColumns, compile_rules, evaluate
from thermoflow.rules import DEFAULT_RULES_FILE, load_rules, thresholds_only
from thermoflow.settings import ThermoflowSettings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `bench` is a package of the repository

from bench.common import checkout, cpu_seconds  # noqa: E402

PROFILES = {
    "freezer": (-22.0, -16.0),
    "coldroom": (2.0, 6.0),
    "rack": (20.0, 30.0),
    "greenhouse": (15.0, 32.0),
}
BREACH = {"freezer": -2.0, "coldroom": 15.0, "rack": 50.0, "greenhouse": 45.0}


def readings(count: int, *, devices: int, breach_rate: float, seed: int = 7) -> list[Reading]:
    """Readings of a fleet: each device at its own level inside its profile's normal range with
    0.2 °C of noise (so the detectors see sensors, not dice), ``breach_rate`` of them far above."""
    rng = np.random.default_rng(seed)
    names = list(PROFILES)
    device = rng.integers(0, devices, count)
    breach = rng.random(count) < breach_rate
    level = rng.random(devices)
    noise = rng.normal(0.0, 0.2, count)
    out = []
    for i in range(count):
        profile = names[int(device[i]) % len(names)]
        low, high = PROFILES[profile]
        middle = low + (high - low) * (0.25 + 0.5 * float(level[device[i]]))
        value = BREACH[profile] if breach[i] else middle + float(noise[i])
        ts = 1_764_000_000.0 + i * 0.001
        out.append(Reading(device_id=f"{profile}-{int(device[i]):05d}", value=value, ts=ts, received_at=ts))
    return out


def bench_pure(batch_size: int = 100_000, repeat: int = 20) -> float:
    rules = compile_rules(load_rules(DEFAULT_RULES_FILE))
    batch = readings(batch_size, devices=10_000, breach_rate=0.01)
    pairs: dict[tuple[str, str], int] = {}
    pair = np.array([pairs.setdefault((r.device_id, r.metric), len(pairs)) for r in batch], dtype=np.int64)
    columns = ReadingColumns(
        device_ids=[d for d, _ in pairs],
        metrics=[m for _, m in pairs],
        pair=pair,
        values=np.array([r.value for r in batch]),
        ts=np.array([r.ts for r in batch]),
    )
    evaluate(columns, rules)  # warm the per-device rule cache, as a running worker has
    started = time.perf_counter()
    for _ in range(repeat):
        evaluate(columns, rules)
    return batch_size * repeat / (time.perf_counter() - started)


async def prefill(settings: ThermoflowSettings, topic: str, batch: list[Reading], partitions: int) -> float:
    """Write the readings fast: one producer batch per partition at a time, many in flight."""
    producer = kafka.producer(settings, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    started = time.perf_counter()
    try:
        pending: dict[int, Any] = {}
        inflight: list[asyncio.Future[Any]] = []
        for reading in batch:
            key = reading.device_id.encode()
            partition = zlib.crc32(key) % partitions
            builder = pending.get(partition)
            if builder is None:
                builder = pending[partition] = producer.create_batch()
            value = encode(reading)
            if builder.append(key=key, value=value, timestamp=None) is None:
                inflight.append(await producer.send_batch(builder, topic, partition=partition))
                builder = pending[partition] = producer.create_batch()
                builder.append(key=key, value=value, timestamp=None)
            if len(inflight) > 64:
                await asyncio.gather(*inflight)
                inflight.clear()
        for partition, builder in pending.items():
            inflight.append(await producer.send_batch(builder, topic, partition=partition))
        await asyncio.gather(*inflight)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def first_batch_at(log_path: Path) -> float | None:
    for line in log_path.read_text(errors="replace").splitlines():
        if '"first_batch_processed"' in line:
            stamp = json.loads(line[line.index("{") :])["timestamp"]  # a terminal escape may precede it
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return None


async def measure(
    settings: ThermoflowSettings,
    *,
    command: list[str],
    env: dict[str, str],
    cwd: Path = ROOT,
    group: str,
    topic: str,
    total: int,
    max_seconds: float,
    log_path: Path,
) -> dict[str, float]:
    """Start a worker; its rate from its first commit until all is committed (or max_seconds).

    The rate is measured between two commits seen by polling the group's offsets every 0.1s,
    so the time to start and join the group is not in it (that is the cold start figure).
    """
    started = time.time()
    with log_path.open("w") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd
        )
        try:
            first: tuple[float, int, float] | None = None
            last = (time.time(), 0, 0.0)
            while time.time() - started < 120 + max_seconds:
                done = await committed(settings, group, topic)
                if proc.returncode is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode}; see {log_path}")
                now, cpu = time.time(), cpu_seconds(proc.pid)
                if done and first is None:
                    first = (now, done, cpu)
                if first is None or done > last[1]:
                    last = (now, done, cpu)
                if done >= total or (first and now - first[0] >= max_seconds):
                    break
                if proc.returncode is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode}; see {log_path}")
                await asyncio.sleep(0.1)
        finally:
            if proc.returncode is None:
                proc.terminate()
            await asyncio.wait_for(proc.wait(), timeout=60)
    if first is None or last[0] == first[0]:
        raise RuntimeError(f"no progress measured; see {log_path}")
    first_batch = first_batch_at(log_path)
    return {
        "rate": (last[1] - first[1]) / (last[0] - first[0]),
        "cpu_per_1000": (last[2] - first[2]) / (last[1] - first[1]) * 1000,
        "processed": float(last[1]),
        "cold_start": (first_batch - started) if first_batch else float("nan"),
        "exit_code": float(proc.returncode or 0),
    }


async def previous_code(
    settings: ThermoflowSettings,
    args: argparse.Namespace,
    *,
    env: dict[str, str],
    rules_file: Path,
    label: str,
    topic: str,
    logs: Path,
) -> dict[str, float]:
    """One case on ``args.previous``'s code (its tree first on the path), median of trials."""
    tree = checkout(args.previous, root=ROOT)
    trials = []
    for trial in range(args.trials):
        group = f"bench-previous-{uuid.uuid4().hex[:8]}"
        result = await measure(
            settings,
            command=[sys.executable, "-m", "thermoflow", "process"],
            env={**env, "PYTHONPATH": str(tree), "THERMOFLOW_PROCESSOR_GROUP": group,
                 "THERMOFLOW_RULES_FILE": str(rules_file)},
            cwd=tree,
            group=group,
            topic=topic,
            total=args.readings,
            max_seconds=300,
            log_path=logs / f"previous-{label.replace(' ', '-')}-{trial}.log",
        )  # fmt: skip
        trials.append(result)
        print(f"  {label} at {args.previous[:12]}, trial {trial + 1}:"
              f" {result['rate']:,.0f} readings/s, {result['cpu_per_1000']:.4f} CPU-s/1000",
              flush=True)  # fmt: skip
    return {key: statistics.median(t[key] for t in trials) for key in ("rate", "cpu_per_1000")}


# -- the baseline: a naive faust agent, one event at a time ---------------------------------------


def naive_worker() -> None:
    """Run the baseline agent (started by this script as a child process)."""
    import faust

    from thermoflow.events import decode_reading, new_alert

    group, source_name, sink_name = sys.argv[2:5]
    settings = ThermoflowSettings()
    ruleset = load_rules(DEFAULT_RULES_FILE)
    data_dir = tempfile.mkdtemp(prefix="bench-naive-")
    app = faust.App(
        group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        autodiscover=False,
        datadir=data_dir,
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.2,  # as the measured worker (THERMOFLOW_COMMIT_INTERVAL below)
    )
    source = app.topic(source_name, value_serializer="raw")
    sink = app.topic(sink_name, value_serializer="raw")

    @app.agent(source)
    async def naive(stream: Any) -> None:
        async for value in stream:
            reading = decode_reading(value)
            breach = ruleset.classify(reading.device_id, reading.metric, reading.value)
            if breach is not None:
                event = new_alert(
                    device_id=reading.device_id,
                    metric=reading.metric,
                    rule_id=breach.rule_id,
                    severity=breach.severity,
                    condition=breach.condition,
                    threshold=breach.threshold,
                    value=reading.value,
                    reading_ts=reading.ts,
                    detected_at=time.time(),
                )
                await sink.send(key=reading.device_id.encode(), value=encode(event))

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=3_000_000)
    parser.add_argument("--trials", type=int, default=3, help="runs of the worker (each a new group)")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--previous", help="a git revision whose worker runs the same cases too")
    parser.add_argument(
        "--only", choices=("thresholds", "every"), help="run one case: thresholds only, or every detector on"
    )
    args = parser.parse_args()

    settings = ThermoflowSettings()
    run = uuid.uuid4().hex[:8]
    source, alerts, deadletter = f"bench-readings-{run}", f"bench-alerts-{run}", f"bench-dlq-{run}"
    logs = Path(tempfile.mkdtemp(prefix="bench-processors-"))

    print(f"pure check, 100,000-reading batches: {bench_pure():,.0f} readings/s", flush=True)

    await kafka.ensure_topics(
        settings, {source: args.partitions, alerts: 6, alerts + "-naive": 6, deadletter: 1}
    )
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
        # Commit often, so "all committed" is seen soon after it happens (the rate's end point).
        "THERMOFLOW_COMMIT_INTERVAL": "0.2",
        "THERMOFLOW_HTTP_PORT": "0",  # no /metrics: the default port may be another run's
    }
    plain_rules = logs / "rules-thresholds-only.yaml"
    plain_rules.write_text(yaml.safe_dump(thresholds_only(yaml.safe_load(DEFAULT_RULES_FILE.read_text()))))
    results: dict[str, dict[str, float]] = {}
    cases = {"thresholds only": plain_rules, "every detector on": DEFAULT_RULES_FILE}
    if args.only:
        cases = {label: rules for label, rules in cases.items() if label.startswith(args.only)}
    for label, rules_file in cases.items():
        trials = []
        for trial in range(args.trials):
            group = f"bench-process-{run}-{len(results)}-{trial}"
            result = await measure(
                settings,
                command=[sys.executable, "-m", "thermoflow", "process"],
                env={**env, "THERMOFLOW_PROCESSOR_GROUP": group, "THERMOFLOW_RULES_FILE": str(rules_file)},
                group=group,
                topic=source,
                total=args.readings,
                max_seconds=300,
                log_path=logs / f"process-{len(results)}-{trial}.log",
            )
            trials.append(result)
            print(
                f"  {label}, trial {trial + 1}: {result['rate']:,.0f} readings/s,"
                f" {result['cpu_per_1000']:.4f} CPU-s/1000, cold start {result['cold_start']:.2f}s "
                f"({result['processed']:,.0f} committed; exit code {result['exit_code']:.0f})",
                flush=True,
            )
        worker = results[label] = {
            "rate": statistics.median(t["rate"] for t in trials),
            "cold_start": statistics.median(t["cold_start"] for t in trials),
            "cpu_per_1000": statistics.median(t["cpu_per_1000"] for t in trials),
        }
        print(
            f"thermoflow process, 1 worker, {label}, end to end (median): {worker['rate']:,.0f} readings/s,"
            f" {worker['cpu_per_1000']:.4f} CPU-s per 1,000 readings",
            flush=True,
        )
    if len(results) == 2:
        plain, full = results["thresholds only"], results["every detector on"]
        print(
            f"every detector on / thresholds only: {full['rate'] / plain['rate']:.2f}x the rate,"
            f" {full['cpu_per_1000'] / plain['cpu_per_1000']:.2f}x the CPU per reading",
            flush=True,
        )
    if args.previous:
        for label, rules_file in cases.items():
            previous = await previous_code(
                settings, args, env=env, rules_file=rules_file, label=label, topic=source, logs=logs
            )
            print(
                f"{label}, this code / {args.previous[:12]}:"
                f" {results[label]['rate'] / previous['rate']:.2f}x the rate,"
                f" {results[label]['cpu_per_1000'] / previous['cpu_per_1000']:.2f}x the CPU per reading",
                flush=True,
            )
    worker = next(iter(results.values()))
    print(f"cold start (process start -> first batch processed, median): {worker['cold_start']:.2f}s")
    if not args.skip_baseline:
        naive = await measure(
            settings,
            command=[
                sys.executable,
                __file__,
                "--naive-worker",
                f"bench-naive-{run}",
                source,
                f"{alerts}-naive",
            ],
            env=env,
            group=f"bench-naive-{run}",
            topic=source,
            total=args.readings,
            max_seconds=args.baseline_seconds,
            log_path=logs / "naive.log",
        )
        print(f"baseline, naive faust agent (one event at a time): {naive['rate']:,.0f} readings/s")
        print(f"ratio: {worker['rate'] / naive['rate']:.1f}x", flush=True)
    print(f"worker logs: {logs}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--naive-worker":
        naive_worker()
    else:
        asyncio.run(main())
