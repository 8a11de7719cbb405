"""The whole pipeline on real services: simulator → Mosquitto → bridge → Kafka → processor →
alert store, notifier (webhook to a local server) and readings sink → PostgreSQL.

Each run has its own MQTT topic prefix, Kafka topics, consumer groups and database schema
(:meth:`thermoflow.pipeline_run.PipelineRun.isolated`), runs every component under `thermoflow run`,
and is judged against the simulator's ground truth: every reading stored exactly once,
alerts with precision and recall 1.0, incidents opened and resolved, one notification per
incident transition. The second test does the same while one process of each kind is
killed with SIGKILL mid-run (and restarted by `thermoflow run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from tests.conftest import ROOT, Endpoints
from tests.support.rules import thresholds_only_rules
from thermoflow import db
from thermoflow.pipeline_run import WEBHOOK_SECRET, PipelineRun
from thermoflow.webhook_receiver import Delivery, signature_valid

DEVICES = 400
RATE_PER_DEVICE = 5.0  # 2,000 readings/s
DURATION_S = 60.0
RESOLVE_AFTER_S = 10.0  # well above the pipeline latency, even on a loaded machine
# The shipped thresholds without the device detectors: this run judges delivery and the threshold
# incidents' lifecycle, where every incident resolves; the detectors are judged in test_demo.
RULES = thresholds_only_rules(ROOT / ".thermoflow" / "e2e" / "rules-thresholds-only.yaml")


@contextlib.asynccontextmanager
async def pipeline(endpoints: Endpoints, name: str) -> AsyncIterator[PipelineRun]:
    run = PipelineRun.isolated(
        endpoints.settings(), ROOT / ".thermoflow" / "e2e" / name, resolve_after=RESOLVE_AFTER_S
    )
    run.names["THERMOFLOW_RULES_FILE"] = str(RULES)
    # The fleet stops at the end: that silence (ingest_silent, resolved only by data) is not this test's.
    run.names["THERMOFLOW_INGEST_SILENT_AFTER"] = "3600"
    try:
        await run.start()
        yield run
    finally:
        await run.stop()
        run.drop_schema()


async def simulate(run: PipelineRun) -> dict[str, Any]:
    return await run.simulate(
        "--devices", str(DEVICES), "--rate", str(RATE_PER_DEVICE), "--duration", str(DURATION_S),
        "--seed", "11", "--anomaly-rate", "12", "--rules", str(RULES), "--connections", "20",
        "--measure-timeout", "90",
    )  # fmt: skip


def count(run: PipelineRun, query: str) -> int:
    with db.connect(run.settings) as conn:
        row = conn.execute(query.encode()).fetchone()
    return int(row[0]) if row else 0


async def wait_for_resolution(run: PipelineRun, *, timeout: float) -> None:
    """Incidents resolve `resolve_after` after their last breach; their notifications follow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        unresolved = await asyncio.to_thread(
            count, run, "SELECT count(*) FROM incidents WHERE status <> 'resolved'"
        )
        total = await asyncio.to_thread(count, run, "SELECT count(*) FROM incidents")
        transitions = {(d.json["incident_id"], d.json["transition"]) for d in run.receiver.deliveries}
        fired = {incident for incident, kind in transitions if kind == "fire"}
        resolved = {incident for incident, kind in transitions if kind == "resolve"}
        if unresolved == 0 and total > 0 and fired <= resolved:
            await asyncio.sleep(2 * RESOLVE_AFTER_S)  # anything late or doubled would show up now
            return
        await asyncio.sleep(1)


def assert_pipeline_result(run: PipelineRun, report: dict[str, Any], *, components_killed: bool) -> None:
    published = report["published"]
    assert published >= DEVICES * RATE_PER_DEVICE * DURATION_S * 0.9, "the simulator did not hold its rate"

    # Every reading stored exactly once.
    rows = count(run, "SELECT count(*) FROM readings")
    unique_keys = count(run, "SELECT count(DISTINCT (device_id, metric, ts)) FROM readings")
    assert rows == unique_keys == published
    kafka_delivery = report["delivery"]["kafka"]
    assert (kafka_delivery["lost"], kafka_delivery["unexpected"]) == (0, 0), kafka_delivery["lost_by_device"]
    assert report["delivery"]["database"]["lost"] == 0
    assert report["delivery"]["deadletter"]["received"] == report["delivery"]["deadletter"]["expected"]

    # The alerts are the ground truth's.
    alerts = report["alerts"]
    assert alerts["episodes"] > 0, "the run had no anomaly that crosses a rule"
    assert (alerts["precision"], alerts["recall"]) == (1.0, 1.0), {k: alerts[k] for k in ("missed", "false")}

    # Incidents opened, and all resolved.
    incidents = count(run, "SELECT count(*) FROM incidents")
    assert incidents > 0
    assert count(run, "SELECT count(*) FROM incidents WHERE status = 'resolved'") == incidents

    # One notification per incident transition, as a receiver that honours Idempotency-Key sees
    # them: one fire and one resolve per incident. A notifier killed between a send and saving
    # its state sends that notification again, with the same key and body (at-least-once);
    # without a kill, no key comes twice.
    deliveries = run.receiver.deliveries
    keys = Counter(d.headers.get("Idempotency-Key") for d in deliveries)
    resent = {key for key, n in keys.items() if n > 1}
    if not components_killed:
        assert not resent, list(resent)[:5]

    # A re-sent key is the same transition (its decided_at and counts may be newer).
    def transition(d: Delivery) -> tuple[Any, ...]:
        return tuple(d.json[k] for k in ("incident_id", "transition", "seq", "severity"))

    first = {d.headers.get("Idempotency-Key"): transition(d) for d in deliveries}
    assert all(transition(d) == first[d.headers.get("Idempotency-Key")] for d in deliveries)
    signature_header = next(h for h in deliveries[0].headers if "signature" in h.lower())
    assert all(
        signature_valid(body=d.body, secret=WEBHOOK_SECRET, signature=d.headers[signature_header])
        for d in deliveries
    )
    deliveries = list({d.headers.get("Idempotency-Key"): d for d in deliveries}.values())
    by_incident: dict[str, Counter[str]] = {}
    for delivery in deliveries:
        by_incident.setdefault(delivery.json["incident_id"], Counter())[delivery.json["transition"]] += 1
    if not components_killed:
        # The store and the notifier group breaches into the same incidents. (When a component
        # is killed, alerts can arrive later than resolve_after, so each side may resolve and
        # reopen an incident at its own moment: then only each side's own lifecycle is checked.)
        assert len(by_incident) == incidents
    for incident_id, transitions in by_incident.items():
        assert transitions["fire"] == 1, (incident_id, transitions)
        assert transitions["resolve"] == 1, (incident_id, transitions)
        assert transitions["escalate"] <= 1 and transitions["repeat"] == 0, (incident_id, transitions)
    escalated = sum(t["escalate"] for t in by_incident.values())
    assert escalated <= count(run, "SELECT count(*) FROM incidents WHERE severity = 'critical'")


async def test_pipeline_end_to_end(endpoints: Endpoints) -> None:
    async with pipeline(endpoints, "steady") as run:
        report = await simulate(run)
        await wait_for_resolution(run, timeout=90)
        assert await run.stop() == 0
        assert_pipeline_result(run, report, components_killed=False)
        assert all(state["restarts"] == 0 for state in run.instances().values()), run.instances()


async def test_pipeline_survives_sigkill_of_each_component(endpoints: Endpoints) -> None:
    async with pipeline(endpoints, "sigkill") as run:
        simulation = asyncio.create_task(simulate(run))
        killed = []
        for pause, names in [(15, ["bridge-1", "store-1"]), (15, ["processor-1", "sink-1", "notifier-1"])]:
            await asyncio.sleep(pause)
            pids = run.pids()
            for name in names:
                os.killpg(pids[name], signal.SIGKILL)
                killed.append(name)
        report = await simulation
        await wait_for_resolution(run, timeout=120)
        assert await run.stop() == 0
        assert_pipeline_result(run, report, components_killed=True)
        instances = run.instances()
        assert all(instances[name]["restarts"] >= 1 for name in killed), instances
