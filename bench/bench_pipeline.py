"""Benchmark: the sustained end-to-end rate of the whole pipeline on this machine.

    .venv/bin/python bench/bench_pipeline.py [--rates 5000,10000,20000] [--seconds 30]

Every component (bridge, processor, sink, alert store, notifier) runs under `thermoflow run`
on the local stack (`thermoflow stack up`), beside Mosquitto, Kafka and PostgreSQL and the
simulator itself, all on this machine. For each target rate a fresh isolated pipeline gets
`--seconds` of QoS 1 readings with anomalies; the simulator's `--measure` report gives the
achieved publish rate, loss and duplicates (Kafka and database), alert precision/recall, and
the p99 latency from publish to stored row. A rate is *sustained* when it was held, nothing
was lost or doubled in the database, and p99 publish -> stored row stayed <= 250 ms.

CPU per reading, the headline figure (it moves far less between machines than wall time): the
CPU each supervised process (and `thermoflow run` itself) spent from the first publish until
the simulator's measurement ended, per 1,000 readings stored, per process and in total; and
the idle overhead, the same processes' CPU over ``IDLE_SECONDS`` before any reading, as a share
of one core. The simulator is not counted.

Baseline, measured in the same run: the simulator alone publishing to Mosquitto at the
highest target rate with nothing consuming (the publish side's ceiling); the ratio is the
sustained pipeline rate over that ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_of, spent  # noqa: E402
from thermoflow.pipeline_run import PipelineRun  # noqa: E402
from thermoflow.stack import Stack, StackConfig  # noqa: E402

P99_GOAL_MS = 250.0
RATE_PER_DEVICE = 5.0
IDLE_SECONDS = 10.0


def fleet_args(rate: float, seconds: float) -> list[str]:
    devices = max(1, round(rate / RATE_PER_DEVICE))
    return ["--devices", str(devices), "--rate", str(RATE_PER_DEVICE), "--duration", str(seconds),
            "--connections", str(min(200, devices)), "--qos", "1", "--anomaly-rate", "6", "--seed", "3",
            "--measure-timeout", "120"]  # fmt: skip


async def pipeline_at(stack: Stack, rate: float, seconds: float) -> dict[str, Any]:
    workdir = ROOT / ".thermoflow" / "bench-pipeline" / f"rate-{int(rate)}"
    shutil.rmtree(workdir, ignore_errors=True)
    run = PipelineRun.isolated(stack.settings(), workdir, resolve_after=10.0)
    try:
        await run.start()
        pids = {**run.pids(), "run": run.supervisor.pid}  # type: ignore[union-attr]
        idle_from = cpu_of(pids)
        await asyncio.sleep(IDLE_SECONDS)
        idle = spent(idle_from, cpu_of(pids))
        busy_from = cpu_of(pids)
        report = await run.simulate(*fleet_args(rate, seconds))
        busy = spent(busy_from, cpu_of(pids))
    finally:
        await run.stop()
        run.drop_schema()
    database = report["delivery"]["database"]
    stored = report["latency"]["publish_to_stored"] or {}
    alert = report["latency"]["publish_to_alert"] or {}
    result = {
        "target": rate,
        "achieved": report["publish"]["achieved_rate"],
        "held": report["publish"]["rate_held"],
        "published": report["published"],
        "stored": database.get("rows"),
        "lost": database.get("lost"),
        "doubled": database.get("duplicates"),
        "p50_stored_ms": stored.get("p50_ms"),
        "p99_stored_ms": stored.get("p99_ms"),
        "p99_alert_ms": alert.get("p99_ms"),
        "precision": report["alerts"]["precision"],
        "recall": report["alerts"]["recall"],
        "idle_core_share": sum(idle.values()) / IDLE_SECONDS,
        "cpu_per_1000": {name: 1000 * cpu / max(1, database.get("rows") or 0) for name, cpu in busy.items()},
    }
    result["sustained"] = bool(
        result["held"] and result["lost"] == 0 and result["doubled"] == 0
        and (result["p99_stored_ms"] or 1e9) <= P99_GOAL_MS
    )  # fmt: skip
    return result


def format_cpu(result: dict[str, Any]) -> str:
    """CPU-seconds per 1,000 readings stored, per process and in total, and the idle overhead."""
    per = result["cpu_per_1000"]
    parts = ", ".join(f"{name} {cpu:.4f}" for name, cpu in sorted(per.items()))
    total = sum(per.values())
    return (f"    CPU-s per 1,000 readings: total {total:.4f} ({1000 * total:.1f} µs/reading) = {parts};"
            f" idle: {100 * result['idle_core_share']:.1f}% of a core")  # fmt: skip


async def publish_only(stack: Stack, rate: float, seconds: float) -> float:
    """The baseline: the simulator alone at ``rate``, nothing consuming; its achieved rate."""
    workdir = ROOT / ".thermoflow" / "bench-pipeline" / "publish-only"
    shutil.rmtree(workdir, ignore_errors=True)
    run = PipelineRun.isolated(stack.settings(), workdir, resolve_after=10.0)
    workdir.mkdir(parents=True, exist_ok=True)
    args = [a for a in fleet_args(rate, seconds) if a not in ("--measure-timeout", "120")]
    report = await run.simulate(*args, measure=False)
    achieved: float = report["publish"]["achieved_rate"]
    return achieved


async def bench(stack: Stack, rates: list[float], seconds: float) -> None:
    started = time.monotonic()
    ceiling = await publish_only(stack, max(rates) * 1.5, seconds)
    print(f"baseline: simulator alone -> Mosquitto, QoS 1, nothing consuming: {ceiling:,.0f} readings/s")
    results = []
    for rate in rates:
        result = await pipeline_at(stack, rate, seconds)
        results.append(result)
        print(
            f"target {rate:>7,.0f}/s: achieved {result['achieved']:>7,.0f}/s held={result['held']!s:5}"
            f" stored {result['stored']}/{result['published']}"
            f" lost={result['lost']} doubled={result['doubled']}"
            f" p50/p99 publish->stored {result['p50_stored_ms']}/{result['p99_stored_ms']} ms"
            f" p99 publish->alert {result['p99_alert_ms']} ms"
            f" precision/recall {result['precision']}/{result['recall']}"
            f" -> {'SUSTAINED' if result['sustained'] else 'not sustained'}",
            flush=True,
        )
        print(format_cpu(result), flush=True)
    sustained = [r for r in results if r["sustained"]]
    best = max((r["achieved"] for r in sustained), default=0.0)
    print(f"sustained end-to-end rate: {best:,.0f} readings/s (p99 publish->stored <= {P99_GOAL_MS:.0f} ms,"
          f" zero loss); ratio to the publish-only ceiling: {best / ceiling:.2f}; goal 20,000/s:"
          f" {best / 20000:.2f}x; total {time.monotonic() - started:.0f}s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates", default="5000,10000,15000,20000", help="target readings/s, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="publishing time per rate")
    parser.add_argument(
        "--state-dir", type=Path, default=Path(".thermoflow/stack"), help="the local stack to run on"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    stack = Stack(StackConfig.saved(args.state_dir.resolve()) or StackConfig())
    stack.up()
    asyncio.run(bench(stack, rates, args.seconds))


if __name__ == "__main__":
    main()
