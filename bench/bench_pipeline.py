"""Benchmark: the sustained end-to-end rate of the whole pipeline on this machine.

    .venv/bin/python bench/bench_pipeline.py [--rates 5000,10000,20000] [--seconds 30]
    .venv/bin/python bench/bench_pipeline.py --shares 0.6 --runs 3    # #17's tail-latency target

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
the idle overhead, the same processes' CPU over ``IDLE_SECONDS`` before any reading (from
``SETTLE_SECONDS`` after they started), as a share of one core. The simulator is not counted
there; a line below gives the rest of the machine per 1,000 readings (Mosquitto, Kafka,
PostgreSQL's postmaster and backends, the simulator with its ``--measure`` side), so that what
a rate needs of the whole host can be read off.

Baseline, measured in the same run: the simulator alone, flat out (``CEILING_ASK``), publishing
to Mosquitto with nothing consuming: the publishes the broker acked per second (the publish
side's ceiling); the ratio is the sustained pipeline rate over that ceiling. With ``--shares``,
the target rates are shares of that run's ceiling instead of fixed rates, and ``--runs``
repeats the whole measurement, ceiling included, so a noisy host shows in the spread. (Until
2026-12-01 the baseline asked for 1.5x the highest target and reported the ask: 29.9k/s for a
20k/s target. Flat out, the simulator publishes 270k-284k/s on the 2-core host here, Mosquitto's
one thread full; 0.6 of that is more than that thread passes on to a subscriber, about 140k/s.)
Each row also gives the p99 of every hop (publish -> bridge, -> Kafka, -> stored, -> alert)
so that a queue shows where it builds, each component's own share (bridge -> Kafka, Kafka ->
alert), and the publish side's (the broker's PUBACK, and the most readings the simulator held
queued behind full QoS 1 windows): on a host short of CPU the tail is often made there, before
the bridge has read anything.
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

from bench.common import children_cpu, cpu_of, server_pids, spent  # noqa: E402
from thermoflow.pipeline_run import PipelineRun  # noqa: E402
from thermoflow.stack import Stack, StackConfig  # noqa: E402

P99_GOAL_MS = 250.0
RATE_PER_DEVICE = 5.0
IDLE_SECONDS = 10.0
CEILING_ASK = 1_000_000.0  # readings/s asked of the publish-only baseline: flat out on any host here
CEILING_RATE_PER_DEVICE = 50.0  # its fleet: 20,000 devices, not 200,000
SETTLE_SECONDS = 5.0  # after start: faust's recovery, the state loads and the first metadata are not idling


def fleet_args(rate: float, seconds: float, per_device: float = RATE_PER_DEVICE) -> list[str]:
    """The bench's fleet for ``rate`` readings/s over ``seconds``: devices at ``per_device`` each."""
    devices = max(1, round(rate / per_device))
    return ["--devices", str(devices), "--rate", str(per_device), "--duration", str(seconds),
            "--connections", str(min(200, devices)), "--qos", "1",
            "--anomaly-rate", "6", "--seed", "3"]  # fmt: skip


async def pipeline_at(stack: Stack, rate: float, seconds: float) -> dict[str, Any]:
    workdir = ROOT / ".thermoflow" / "bench-pipeline" / f"rate-{int(rate)}"
    shutil.rmtree(workdir, ignore_errors=True)
    run = PipelineRun.isolated(stack.settings(), workdir, resolve_after=10.0)
    try:
        await run.start()
        pids = {**run.pids(), "run": run.supervisor.pid}  # type: ignore[union-attr]
        await asyncio.sleep(SETTLE_SECONDS)
        idle_from = cpu_of(pids)
        await asyncio.sleep(IDLE_SECONDS)
        idle = spent(idle_from, cpu_of(pids))
        busy_from, servers_from, simulator_from = cpu_of(pids), cpu_of(server_pids(stack)), children_cpu()
        report = await run.simulate(*fleet_args(rate, seconds), "--measure-timeout", "120")
        busy = spent(busy_from, cpu_of(pids))
        rest = {"simulator": children_cpu() - simulator_from}
        # A backend that PostgreSQL started during the run counts from zero; they add up under "postgres".
        for name, cpu in cpu_of(server_pids(stack)).items():
            server = name.split("-")[0]
            rest[server] = rest.get(server, 0.0) + cpu - servers_from.get(name, 0.0)
    finally:
        await run.stop()
        run.drop_schema()
    database = report["delivery"]["database"]
    stored = report["latency"]["publish_to_stored"] or {}
    alert = report["latency"]["publish_to_alert"] or {}
    rows = max(1, database.get("rows") or 0)
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
        # The publish side's own delay: the broker's PUBACK, and readings stamped but still queued in
        # the simulator behind a full QoS 1 window. Seconds here mean the host could not publish the
        # rate, whatever the pipeline does.
        "puback_ms": [(report["publish"].get("ack_latency") or {}).get(p) for p in ("p50_ms", "p99_ms")],
        "queued_peak": max((s["queued"] for s in report["publish"].get("timeline") or []), default=0),
        "precision": report["alerts"]["precision"],
        "recall": report["alerts"]["recall"],
        "idle_core_share": sum(idle.values()) / IDLE_SECONDS,
        "idle_per_process": {name: cpu / IDLE_SECONDS for name, cpu in idle.items()},
        "p99_hops_ms": {
            hop.removeprefix("publish_to_"): (report["latency"].get(hop) or {}).get("p99_ms")
            for hop in ("publish_to_bridge", "publish_to_kafka", "publish_to_stored", "publish_to_alert")
        },
        # Each component's own share, so that a queue early in the line is not read as a later one's.
        "p99_own_ms": {
            hop: (report["latency"].get(hop) or {}).get("p99_ms")
            for hop in ("bridge_to_kafka", "kafka_to_alert")
        },
        "cpu_per_1000": {name: 1000 * cpu / rows for name, cpu in busy.items()},
        "rest_cpu_per_1000": {name: 1000 * cpu / rows for name, cpu in rest.items()},
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
    idle_of = sorted(result["idle_per_process"].items())
    idle = ", ".join(f"{name} {100 * share:.2f}" for name, share in idle_of)
    hops = ", ".join(f"{hop} {ms}" for hop, ms in result["p99_hops_ms"].items())
    own = ", ".join(f"{hop} {ms}" for hop, ms in result["p99_own_ms"].items())
    rest = ", ".join(f"{name} {cpu:.4f}" for name, cpu in sorted(result["rest_cpu_per_1000"].items()))
    return (f"    CPU-s per 1,000 readings: total {total:.4f} ({1000 * total:.1f} µs/reading) = {parts};"
            f" idle: {100 * result['idle_core_share']:.1f}% of a core = {idle}\n"
            f"    the rest of the machine, not counted above, CPU-s per 1,000 readings: {rest}"
            f" (the simulator with its --measure side)\n"
            f"    p99 per hop, ms from publish: {hops}; a component's own: {own}\n"
            f"    publish side: PUBACK p50/p99 {result['puback_ms'][0]}/{result['puback_ms'][1]} ms,"
            f" at most {result['queued_peak']:,} readings queued in the simulator")  # fmt: skip


async def publish_ceiling(stack: Stack, seconds: float) -> float:
    """The baseline: the simulator alone, flat out, nothing consuming; publishes the broker acked per
    second, the drain after the last one included.

    It asks for ``CEILING_ASK``, more than any 2-core host here publishes, so the figure is the host's
    and not the ask's: before, the ask was 1.5x the highest target, and that ask came back as the
    "ceiling" (29.9k/s for a 20k target on a host that publishes 280k/s).
    """
    workdir = ROOT / ".thermoflow" / "bench-pipeline" / "publish-only"
    shutil.rmtree(workdir, ignore_errors=True)
    run = PipelineRun.isolated(stack.settings(), workdir, resolve_after=10.0)
    workdir.mkdir(parents=True, exist_ok=True)
    broker = {"mosquitto": pid} if (pid := stack.mosquitto.pid()) is not None else {}
    broker_from, simulator_from = cpu_of(broker), children_cpu()
    report = await run.simulate(*fleet_args(CEILING_ASK, seconds, CEILING_RATE_PER_DEVICE), measure=False)
    publish = report["publish"]
    acked: int = max(1, publish["acked"])
    cpu = {**spent(broker_from, cpu_of(broker)), "simulator": children_cpu() - simulator_from}
    ceiling = acked / (report["run"]["duration_s"] + publish["drain_s"])
    per_1000 = ", ".join(f"{name} {1000 * s / acked:.4f}" for name, s in cpu.items())
    print(f"baseline: the simulator alone, flat out, QoS 1, nothing consuming: {ceiling:,.0f}/s acked")
    print(f"    CPU-s per 1,000 publishes: {per_1000}", flush=True)
    return float(ceiling)


async def bench(stack: Stack, rates: list[float], shares: list[float], seconds: float) -> list[float]:
    """One run: the ceiling, then each target rate; returns the sustained-or-not p99s of the run."""
    started = time.monotonic()
    ceiling = await publish_ceiling(stack, seconds)
    targets = [(rate, None) for rate in rates] + [(round(share * ceiling, -2), share) for share in shares]
    results = []
    for rate, share in targets:
        result = await pipeline_at(stack, rate, seconds)
        results.append(result)
        of_ceiling = f" ({share:.2f} of the ceiling)" if share is not None else ""
        print(
            f"target {rate:>7,.0f}/s{of_ceiling}: achieved {result['achieved']:>7,.0f}/s"
            f" held={result['held']!s:5}"
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
    return [r["p99_stored_ms"] or float("inf") for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates", default=None, help="target readings/s, comma-separated [5000,10000,15000,20000]"
    )
    parser.add_argument(
        "--shares", default="", help="target rates as shares of the same run's ceiling, comma-separated: 0.6"
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole measurement, ceiling included")
    parser.add_argument("--seconds", type=float, default=30.0, help="publishing time per rate")
    parser.add_argument(
        "--state-dir", type=Path, default=Path(".thermoflow/stack"), help="the local stack to run on"
    )
    args = parser.parse_args()
    shares = [float(s) for s in args.shares.split(",") if s]
    if any(not 0 < share <= 1 for share in shares):
        parser.error(f"--shares must lie in (0, 1], got {args.shares!r}")
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    rates = [float(r) for r in (args.rates or ("" if shares else "5000,10000,15000,20000")).split(",") if r]
    stack = Stack(StackConfig.saved(args.state_dir.resolve()) or StackConfig())
    stack.up()
    p99s = []
    for run in range(args.runs):
        if args.runs > 1:
            print(f"--- run {run + 1} of {args.runs}", flush=True)
        p99s.append(asyncio.run(bench(stack, rates, shares, args.seconds)))
    if args.runs > 1:
        for column in range(len(p99s[0])):
            worst = max(run[column] for run in p99s)
            verdict = "within" if worst <= P99_GOAL_MS else "over"
            print(f"target #{column + 1}: p99 publish->stored per run {[run[column] for run in p99s]} ms;"
                  f" worst {worst} ms -> {verdict} {P99_GOAL_MS:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
