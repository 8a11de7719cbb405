"""Alert store benchmark: alert events/s into PostgreSQL from one process, and a row-by-row baseline.

    .venv/bin/python bench/bench_alert_store.py [--events 300000] [--devices 5000] [--baseline 20000]

Kafka and PostgreSQL come from THERMOFLOW_KAFKA_BOOTSTRAP / THERMOFLOW_DATABASE_URL (default: the
local stack). Each run uses a fresh topic and a fresh database schema (dropped at the end).
In the same run it measures:

1. `AlertStore` (one process, the same code as `thermoflow alerts store`) consuming a pre-filled
   topic: events/s from its first committed batch until every event is stored;
2. `store_batch` alone (no Kafka): events/s of the database side, in transactions of the
   store's batch size (THERMOFLOW_STORE_BATCH_SIZE, default 20,000);
3. the baseline: one `INSERT ... ON CONFLICT DO NOTHING` per event (incidents not even updated),
   5,000 per transaction, events/s; and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import psycopg
from psycopg import sql

from thermoflow import db, kafka
from thermoflow.alerts.lifecycle import Policy
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.alerts.store import AlertStore, store_batch
from thermoflow.events import AlertEvent, Severity, new_alert


def make_alerts(count: int, devices: int, *, start: float) -> list[AlertEvent]:
    """Alerts from ``devices`` devices, two rules, one breach per device and rule every second."""
    alerts = []
    for i in range(count):
        device = f"bench-{i % devices:05d}"
        rule = "too-warm" if (i // devices) % 2 == 0 else "too-cold"
        ts = start + i // (2 * devices)
        severity: Severity = "critical" if i % 7 == 0 else "warning"
        alerts.append(
            new_alert(
                device_id=device,
                metric="temperature",
                rule_id=rule,
                severity=severity,
                condition="above",
                threshold=-10.0,
                value=-5.0 + i % 5,
                reading_ts=ts,
                detected_at=ts + 0.1,
            )
        )
    return alerts


async def fill_topic(settings: AlertsSettings, topic: str, alerts: list[AlertEvent]) -> None:
    await kafka.ensure_topics(settings, {topic: 6})
    await kafka.produce_events(settings, topic, alerts)


async def bench_store(settings: AlertsSettings, total: int) -> float:
    store = AlertStore(settings)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(store.run(stop, ready=ready))
    first: tuple[float, int] | None = None
    while True:
        stored = store.metrics.counter("alerts_inserted")
        if stored and first is None:
            first = (time.perf_counter(), stored)
        if stored >= total:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - first[0] if first else float("nan")
    stop.set()
    await task
    assert first is not None
    return (total - first[1]) / elapsed


async def bench_store_batch(settings: AlertsSettings, alerts: list[AlertEvent], policy: Policy) -> float:
    conn = await db.connect_async(settings)
    size = settings.store_batch_size
    try:
        started = time.perf_counter()
        for chunk in range(0, len(alerts), size):
            await store_batch(conn, alerts=alerts[chunk : chunk + size], policy=policy)
        return len(alerts) / (time.perf_counter() - started)
    finally:
        await conn.close()


def bench_row_by_row(settings: AlertsSettings, alerts: list[AlertEvent]) -> float:
    with db.connect(settings) as conn:
        started = time.perf_counter()
        for chunk in range(0, len(alerts), 5000):
            with conn.transaction():
                for a in alerts[chunk : chunk + 5000]:
                    conn.execute(
                        "INSERT INTO alert_events (alert_id, reading_ts, device_id, metric, rule_id,"
                        " severity, condition, threshold, value, detected_at) VALUES (%s, to_timestamp(%s),"
                        " %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s)) ON CONFLICT DO NOTHING",
                        (a.alert_id, a.reading_ts, a.device_id, a.metric, a.rule_id, a.severity,
                         a.condition, a.threshold, a.value, a.detected_at),
                    )  # fmt: skip
        return len(alerts) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--baseline", type=int, default=20_000, help="events for the row-by-row baseline")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    base = AlertsSettings()
    settings = base.model_copy(
        update={
            "alerts_topic": f"bench-alerts-{run}",
            "store_group": f"bench-store-{run}",
            "database_schema": f"bench_store_{run}",
        }
    )
    alerts = make_alerts(args.events, args.devices, start=time.time() - 3600)
    print(
        f"{args.events:,} alert events, {args.devices:,} devices x 2 rules; filling the topic...", flush=True
    )
    await fill_topic(settings, settings.alerts_topic, alerts)
    try:
        rate = await bench_store(settings, args.events)
        print(f"alert store (Kafka -> PostgreSQL, one process): {rate:,.0f} events/s", flush=True)

        direct = settings.model_copy(update={"database_schema": f"bench_direct_{run}"})
        db.migrate(direct)
        policy = Policy(resolve_after=300, repeat_interval=3600)
        batch_rate = await bench_store_batch(direct, alerts, policy)
        print(
            f"store_batch alone ({settings.store_batch_size:,}-event transactions, no Kafka): "
            f"{batch_rate:,.0f} events/s",
            flush=True,
        )

        naive = settings.model_copy(update={"database_schema": f"bench_naive_{run}"})
        db.migrate(naive)
        naive_rate = bench_row_by_row(naive, alerts[: args.baseline])
        print(f"baseline, row-by-row INSERT (events only): {naive_rate:,.0f} events/s", flush=True)
        print(f"ratio store / row-by-row: {rate / naive_rate:.1f}x", flush=True)
        print(f"ratio store_batch / row-by-row: {batch_rate / naive_rate:.1f}x", flush=True)
    finally:
        with psycopg.connect(base.database_dsn, autocommit=True) as conn:
            for prefix in ("bench_store_", "bench_direct_", "bench_naive_"):
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(prefix + run)))


if __name__ == "__main__":
    from thermoflow.logs import configure_logging

    configure_logging(level="WARNING")
    asyncio.run(main())
