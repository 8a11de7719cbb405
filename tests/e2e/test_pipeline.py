"""The whole pipeline on real services: simulator → Mosquitto → bridge → Kafka → processor →
alert store, notifier (webhook to a local server) and readings sink → PostgreSQL.

Each run gets its own MQTT topic prefix, Kafka topics, consumer groups and database schema,
runs every component under `thermoflow run`, and judges the result against the simulator's
ground truth: every reading stored exactly once, alerts with precision and recall 1.0,
incidents opened and resolved, one notification per incident transition. The second test
does the same while one process of each kind is killed with SIGKILL mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import ROOT, Endpoints
from thermoflow import db, kafka
from thermoflow.settings import ThermoflowSettings
from thermoflow.webhook_receiver import WebhookReceiver, signature_valid

DEVICES = 400
RATE_PER_DEVICE = 5.0  # 2,000 readings/s
DURATION_S = 60.0
RESOLVE_AFTER_S = 6.0
SECRET = "e2e-shared-secret"
RULES = ROOT / "processors" / "rules.yaml"


@dataclass
class Pipeline:
    """One isolated pipeline run: its names, its environment, its supervisor and receiver."""

    endpoints: Endpoints
    workdir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    receiver: WebhookReceiver = field(default_factory=WebhookReceiver)
    output: list[str] = field(default_factory=list)
    supervisor: asyncio.subprocess.Process | None = None
    _pump: asyncio.Task[None] | None = None

    @property
    def schema(self) -> str:
        return f"e2e_{self.run_id}"

    @property
    def mqtt_prefix(self) -> str:
        return f"e2e-{self.run_id}"

    @property
    def settings(self) -> ThermoflowSettings:
        return self.endpoints.settings(
            database_schema=self.schema,
            readings_topic=f"e2e-{self.run_id}.readings",
            alerts_topic=f"e2e-{self.run_id}.alerts",
            deadletter_topic=f"e2e-{self.run_id}.deadletter",
        )

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "THERMOFLOW_MQTT_URL": s.mqtt_url,
            "THERMOFLOW_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "THERMOFLOW_DATABASE_URL": s.database_dsn,
            "THERMOFLOW_DATABASE_SCHEMA": s.database_schema,
            "THERMOFLOW_READINGS_TOPIC": s.readings_topic,
            "THERMOFLOW_ALERTS_TOPIC": s.alerts_topic,
            "THERMOFLOW_DEADLETTER_TOPIC": s.deadletter_topic,
            # the bridge
            "THERMOFLOW_MQTT_TOPICS": f"{self.mqtt_prefix}/+/temperature",
            "THERMOFLOW_TOPIC_TEMPLATE": f"{self.mqtt_prefix}/{{device_id}}/{{metric}}",
            "THERMOFLOW_MQTT_CLIENT_ID": f"e2e-bridge-{self.run_id}",
            # the consumers
            "THERMOFLOW_SINK_GROUP": f"e2e-sink-{self.run_id}",
            "THERMOFLOW_PROCESSOR_GROUP": f"e2e-processors-{self.run_id}",
            "THERMOFLOW_RULES_FILE": str(RULES),
            "THERMOFLOW_STORE_GROUP": f"e2e-store-{self.run_id}",
            "THERMOFLOW_NOTIFY_GROUP": f"e2e-notify-{self.run_id}",
            "THERMOFLOW_NOTIFIER_STATE_TOPIC": f"e2e-{self.run_id}.notifier-state",
            "THERMOFLOW_RESOLVE_AFTER": str(RESOLVE_AFTER_S),
            "THERMOFLOW_REPEAT_INTERVAL": "3600",
            "THERMOFLOW_SWEEP_INTERVAL": "1",
            "THERMOFLOW_WEBHOOK_URL": self.receiver.url,
            "THERMOFLOW_WEBHOOK_SECRET": SECRET,
            "THERMOFLOW_NOTIFY_LOG": "false",
            "THERMOFLOW_LOG_LEVEL": "INFO",
        }

    async def start(self) -> None:
        await self.receiver.start()
        s = self.settings
        await kafka.ensure_topics(s, {s.readings_topic: 12, s.alerts_topic: 6, s.deadletter_topic: 3})
        await asyncio.to_thread(db.migrate, s)
        self.supervisor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "thermoflow", "run",
            "--status-file", str(self.status_file), "--grace", "20",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env(), cwd=ROOT,
        )  # fmt: skip
        self._pump = asyncio.create_task(self._read_output())
        await self.wait_for_output("mqtt_subscribed", timeout=60)
        await self.wait_for_output("sink_started", timeout=60)

    @property
    def status_file(self) -> Path:
        return self.workdir / "run-status.json"

    async def _read_output(self) -> None:
        assert self.supervisor is not None and self.supervisor.stdout is not None
        with (self.workdir / "pipeline.log").open("w") as log:
            while line := await self.supervisor.stdout.readline():
                text = line.decode(errors="replace")
                self.output.append(text)
                log.write(text)
                log.flush()

    async def wait_for_output(self, needle: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in line for line in self.output):
                return
            await asyncio.sleep(0.2)
        pytest.fail(
            f"no {needle!r} in the pipeline's output within {timeout}s; see {self.workdir}/pipeline.log"
        )

    def pids(self) -> dict[str, int]:
        instances = json.loads(self.status_file.read_text())["instances"]
        return {name: state["pid"] for name, state in instances.items() if state["pid"]}

    async def simulate(self) -> dict[str, Any]:
        report = self.workdir / "report.json"
        s = self.settings
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "thermoflow", "simulate",
            "--devices", str(DEVICES), "--rate", str(RATE_PER_DEVICE), "--duration", str(DURATION_S),
            "--seed", "11", "--anomaly-rate", "12", "--rules", str(RULES),
            "--incident-gap", str(RESOLVE_AFTER_S), "--connections", "20",
            "--topic-template", f"{self.mqtt_prefix}/{{device_id}}/{{metric}}",
            "--client-prefix", f"e2e-sim-{self.run_id}",
            "--readings-topic", s.readings_topic, "--alerts-topic", s.alerts_topic,
            "--deadletter-topic", s.deadletter_topic,
            "--measure", "--measure-timeout", "90", "--report", str(report), "--quiet",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env(), cwd=ROOT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        (self.workdir / "simulator.log").write_bytes(out)
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
        loaded: dict[str, Any] = json.loads(report.read_text())
        return loaded

    async def stop(self) -> int | None:
        code = None
        if self.supervisor is not None and self.supervisor.returncode is None:
            self.supervisor.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(self.supervisor.wait(), 60)
        if self._pump is not None:
            await self._pump
        await self.receiver.stop()
        return code

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        with db.connect(self.settings) as conn:
            return conn.execute(statement.encode()).fetchall()

    async def wait_for_resolution(self, *, timeout: float) -> None:
        """Incidents resolve `resolve_after` after their last breach; notifications follow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            open_incidents = await asyncio.to_thread(
                self.query, "SELECT count(*) FROM incidents WHERE status <> 'resolved'"
            )
            resolves = sum(1 for d in self.receiver.deliveries if d.json.get("transition") == "resolve")
            total = await asyncio.to_thread(self.query, "SELECT count(*) FROM incidents")
            if open_incidents[0][0] == 0 and resolves >= total[0][0] > 0:
                await asyncio.sleep(2 * RESOLVE_AFTER_S)  # anything late would show up now
                return
            await asyncio.sleep(1)


@contextlib.asynccontextmanager
async def pipeline(endpoints: Endpoints, name: str) -> AsyncIterator[Pipeline]:
    workdir = ROOT / ".thermoflow" / "e2e" / name
    workdir.mkdir(parents=True, exist_ok=True)
    run = Pipeline(endpoints, workdir)
    try:
        await run.start()
        yield run
    finally:
        await run.stop()
        with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(run.schema)))


def assert_pipeline_result(run: Pipeline, report: dict[str, Any]) -> None:
    published = report["published"]
    assert published >= DEVICES * RATE_PER_DEVICE * DURATION_S * 0.9, "the simulator did not hold its rate"

    # Every reading stored exactly once.
    rows, unique_keys = run.query("SELECT count(*), count(DISTINCT (device_id, metric, ts)) FROM readings")[0]
    assert rows == unique_keys == published
    kafka_delivery = report["delivery"]["kafka"]
    assert (kafka_delivery["lost"], kafka_delivery["unexpected"]) == (0, 0)
    assert report["delivery"]["database"]["lost"] == 0
    assert report["delivery"]["deadletter"]["received"] == report["delivery"]["deadletter"]["expected"]

    # The alerts are the ground truth's.
    alerts = report["alerts"]
    assert alerts["episodes"] > 0, "the run had no anomaly that crosses a rule"
    assert (alerts["precision"], alerts["recall"]) == (1.0, 1.0), {k: alerts[k] for k in ("missed", "false")}

    # Incidents opened and resolved.
    incidents = dict(run.query("SELECT status, count(*) FROM incidents GROUP BY status"))
    assert set(incidents) == {"resolved"} and incidents["resolved"] > 0, incidents

    # One notification per incident transition: no key twice, one fire and one resolve each.
    deliveries = run.receiver.deliveries
    keys = Counter(d.headers.get("Idempotency-Key") for d in deliveries)
    assert keys and max(keys.values()) == 1, [k for k, n in keys.items() if n > 1][:5]
    signature_header = next(h for h in deliveries[0].headers if "signature" in h.lower())
    assert all(signature_valid(body=d.body, secret=SECRET, signature=d.headers[signature_header])
               for d in deliveries)  # fmt: skip
    by_incident: dict[str, Counter[str]] = {}
    for delivery in deliveries:
        by_incident.setdefault(delivery.json["incident_id"], Counter())[delivery.json["transition"]] += 1
    assert len(by_incident) == incidents["resolved"]
    for incident_id, transitions in by_incident.items():
        assert transitions["fire"] == 1 and transitions["resolve"] == 1, (incident_id, transitions)
        assert transitions["escalate"] <= 1 and transitions["repeat"] == 0, (incident_id, transitions)
    escalated = sum(t["escalate"] for t in by_incident.values())
    critical = run.query("SELECT count(*) FROM incidents WHERE severity = 'critical'")[0][0]
    assert escalated <= critical


async def test_pipeline_end_to_end(endpoints: Endpoints) -> None:
    async with pipeline(endpoints, "steady") as run:
        report = await run.simulate()
        await run.wait_for_resolution(timeout=90)
        code = await run.stop()
        assert code == 0
        assert_pipeline_result(run, report)
        restarts = json.loads(run.status_file.read_text())["instances"]
        assert all(state["restarts"] == 0 for state in restarts.values()), restarts


async def test_pipeline_survives_sigkill_of_each_component(endpoints: Endpoints) -> None:
    async with pipeline(endpoints, "sigkill") as run:
        simulation = asyncio.create_task(run.simulate())
        killed = []
        for pause, names in [(15, ["bridge-1", "store-1"]), (15, ["processor-1", "sink-1", "notifier-1"])]:
            await asyncio.sleep(pause)
            pids = run.pids()
            for name in names:
                os.killpg(pids[name], signal.SIGKILL)
                killed.append(name)
        report = await simulation
        await run.wait_for_resolution(timeout=120)
        code = await run.stop()
        assert code == 0
        assert_pipeline_result(run, report)
        restarts = json.loads(run.status_file.read_text())["instances"]
        assert all(restarts[name]["restarts"] >= 1 for name in killed), restarts
