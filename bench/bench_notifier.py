"""Notifier benchmark: latency from an alert event on Kafka to the webhook receiving it.

    .venv/bin/python bench/bench_notifier.py [--rate 1000] [--seconds 20]

Kafka comes from THERMOFLOW_KAFKA_BOOTSTRAP (default: the local stack). In the same run:

1. `thermoflow alerts notify` runs as its own process, its webhook channel pointed at a local
   aiohttp server; the bench produces ``--rate`` alert events/s, each a new incident (one
   "fire" transition each), for ``--seconds``; latency = the webhook's receive time minus the
   alert's reading_ts (set to its send time): p50, p99, max;
2. the baseline: the Kafka hop alone at the same rate (a plain consumer in this process),
   p50/p99, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from thermoflow import kafka
from thermoflow.events import AlertEvent, encode, new_alert
from thermoflow.settings import ThermoflowSettings

ROOT = Path(__file__).resolve().parent.parent


def alert(device: str, ts: float) -> AlertEvent:
    return new_alert(
        device_id=device, metric="temperature", rule_id="too-warm", severity="critical",
        condition="above", threshold=-10.0, value=-2.0, reading_ts=ts, detected_at=ts,
    )  # fmt: skip


async def wait_until(predicate: Callable[[], bool], *, timeout: float) -> None:
    """Poll until ``predicate()`` holds or ``timeout`` seconds pass."""
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)


async def send_at_rate(
    settings: ThermoflowSettings, topic: str, *, prefix: str, rate: int, seconds: float
) -> int:
    """Produce ``rate`` new-incident alerts per second in 10 ms ticks; returns how many were sent."""
    producer = kafka.producer(settings)
    await producer.start()
    sent, tick, per_tick = 0, 0.01, max(1, rate // 100)
    started = time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed / tick) * per_tick + per_tick
            while sent < due:
                device = f"{prefix}-{sent}"
                await producer.send(topic, encode(alert(device, time.time())), key=device.encode())
                sent += 1
            await asyncio.sleep(tick - (time.perf_counter() - started) % tick)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def percentiles(latencies: list[float]) -> str:
    values = np.asarray(latencies) * 1000
    return (
        f"p50 {np.percentile(values, 50):.1f} ms, p99 {np.percentile(values, 99):.1f} ms, "
        f"max {values.max():.1f} ms ({values.size:,} samples)"
    )


async def bench_notifier(settings: ThermoflowSettings, rate: int, seconds: float) -> list[float]:
    run = uuid.uuid4().hex[:8]
    topic = f"bench-notify-{run}"
    await kafka.ensure_topics(settings, {topic: 6})
    latencies: list[float] = []
    received = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal received
        body = json.loads(await request.read())
        received += 1
        if body["device_id"].startswith("load-"):
            latencies.append(time.time() - body["opened_at"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    env = {
        **os.environ,
        "THERMOFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "THERMOFLOW_ALERTS_TOPIC": topic,
        "THERMOFLOW_NOTIFY_GROUP": f"bench-notify-{run}",
        "THERMOFLOW_NOTIFIER_STATE_TOPIC": f"bench-notify-state-{run}",
        "THERMOFLOW_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",
        "THERMOFLOW_WEBHOOK_SECRET": "bench-secret",
        "THERMOFLOW_NOTIFY_LOG": "false",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "thermoflow",
        "alerts",
        "notify",
        "--log-level",
        os.environ.get("BENCH_NOTIFY_LOG_LEVEL", "WARNING"),
        env=env,
        cwd=ROOT,
    )
    try:
        warm = await send_at_rate(settings, topic, prefix="warm", rate=100, seconds=1)
        await wait_until(lambda: received >= warm, timeout=120)  # joined its group, delivering
        sent = await send_at_rate(settings, topic, prefix="load", rate=rate, seconds=seconds)
        await wait_until(lambda: len(latencies) >= sent, timeout=120)
        print(f"notifier: sent {sent:,} transitions at {sent / seconds:,.0f}/s, got {len(latencies):,}")
    finally:
        proc.terminate()
        await proc.wait()
        await runner.cleanup()
    return latencies


async def bench_kafka_hop(settings: ThermoflowSettings, rate: int, seconds: float) -> list[float]:
    run = uuid.uuid4().hex[:8]
    topic = f"bench-hop-{run}"
    await kafka.ensure_topics(settings, {topic: 6})
    consumer = kafka.consumer(settings, topic, group_id=f"bench-hop-{run}", auto_offset_reset="latest")
    await consumer.start()
    latencies: list[float] = []
    done = asyncio.Event()

    async def consume() -> None:
        while not done.is_set():
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.time()
                for record in records:
                    body: dict[str, Any] = json.loads(record.value)
                    if body["device_id"].startswith("load-"):
                        latencies.append(now - body["reading_ts"])

    reader = asyncio.create_task(consume())
    try:
        await wait_until(lambda: bool(consumer.assignment()), timeout=60)
        await asyncio.sleep(1)
        sent = await send_at_rate(settings, topic, prefix="load", rate=rate, seconds=seconds)
        await wait_until(lambda: len(latencies) >= sent, timeout=60)
    finally:
        done.set()
        await reader
        await consumer.stop()
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=1000, help="incident transitions per second")
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    settings = ThermoflowSettings()
    notifier = await bench_notifier(settings, args.rate, args.seconds)
    print(f"alert on Kafka -> webhook received: {percentiles(notifier)}", flush=True)
    hop = await bench_kafka_hop(settings, args.rate, args.seconds)
    print(f"baseline, the Kafka hop alone (produce -> consume): {percentiles(hop)}", flush=True)
    print(
        f"ratio notifier / Kafka hop: p50 {np.percentile(notifier, 50) / np.percentile(hop, 50):.1f}x, "
        f"p99 {np.percentile(notifier, 99) / np.percentile(hop, 99):.1f}x",
        flush=True,
    )


if __name__ == "__main__":
    from thermoflow.logs import configure_logging

    configure_logging(level="WARNING")
    asyncio.run(main())
