"""`thermoflow demo`: the local stack, the whole pipeline, a demo fleet and a live view.

The pipeline runs under `thermoflow run` and the fleet under `thermoflow simulate`, both as
child processes with their logs in the demo's folder; notifications go to a webhook
receiver inside this process, so the view can show the latest ones. On exit (the duration
is over, or Ctrl-C) everything is stopped and a summary is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from thermoflow import db, kafka
from thermoflow.observe import KafkaObserver, kafka_observer
from thermoflow.settings import ThermoflowSettings
from thermoflow.webhook_receiver import WebhookReceiver

REFRESH_S = 1.0
RESOLVE_AFTER_S = 20.0
DRAIN_TIMEOUT_S = 90.0


@dataclass
class Sample:
    """What the view shows at one moment."""

    at: float
    totals: dict[str, int]
    lag: dict[str, int]
    stored: int
    incidents: list[tuple[Any, ...]]
    incident_counts: dict[str, int]


@dataclass
class DemoRun:
    settings: ThermoflowSettings
    workdir: Path
    devices: int
    duration: float
    seed: int
    console: Console = field(default_factory=Console)
    receiver: WebhookReceiver = field(default_factory=WebhookReceiver)
    started_at: float = field(default_factory=time.time)
    rates: dict[str, float] = field(default_factory=dict)
    _previous: Sample | None = None

    @property
    def report_path(self) -> Path:
        return self.workdir / "simulation-report.json"

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "THERMOFLOW_MQTT_URL": s.mqtt_url,
            "THERMOFLOW_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "THERMOFLOW_DATABASE_URL": s.database_dsn,
            "THERMOFLOW_DATABASE_SCHEMA": s.database_schema,
            "THERMOFLOW_WEBHOOK_URL": self.receiver.url,
            "THERMOFLOW_WEBHOOK_SECRET": "thermoflow-demo",
            # A demo is short: incidents resolve after 20 quiet seconds, not the default 5 minutes.
            "THERMOFLOW_RESOLVE_AFTER": str(RESOLVE_AFTER_S),
            "THERMOFLOW_SWEEP_INTERVAL": "2",
            "THERMOFLOW_NOTIFY_LOG": "false",
            "PYTHONUNBUFFERED": "1",
        }

    async def start(self, argv: list[str], log_name: str) -> asyncio.subprocess.Process:
        log = (self.workdir / log_name).open("ab")
        try:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "thermoflow", *argv,
                stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                env=self.env(), start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()

    async def sample(self, observer: KafkaObserver) -> Sample:
        s = self.settings
        topic_names = [s.readings_topic, s.alerts_topic, s.deadletter_topic]
        totals = await observer.end_offsets(topic_names)
        lag = await observer.lag([s.readings_topic, s.alerts_topic])
        stored, incidents, counts = await asyncio.to_thread(self.query_database)
        return Sample(time.monotonic(), totals, lag, stored, incidents, counts)

    def query_database(self) -> tuple[int, list[tuple[Any, ...]], dict[str, int]]:
        """Rows stored and incidents opened since the demo started, and the open incidents."""
        since = self.started_at
        try:
            with db.connect(self.settings) as conn:
                stored = _scalar(
                    conn, "SELECT count(*) FROM readings WHERE stored_at >= to_timestamp(%s)", since
                )
                incidents = conn.execute(
                    "SELECT device_id, rule_id, severity, status, peak_value, opened_at FROM incidents"
                    " WHERE status <> 'resolved' ORDER BY severity DESC, opened_at DESC LIMIT 12"
                ).fetchall()
                opened = _scalar(
                    conn, "SELECT count(*) FROM incidents WHERE opened_at >= to_timestamp(%s)", since
                )
                resolved = _scalar(
                    conn,
                    "SELECT count(*) FROM incidents"
                    " WHERE opened_at >= to_timestamp(%s) AND status = 'resolved'",
                    since,
                )
        except psycopg.Error:
            return 0, [], {}  # tables not created yet: the consumers are still starting
        return stored, incidents, {"opened": opened, "resolved": resolved}

    def view(self, sample: Sample, elapsed: float) -> Group:
        s = self.settings
        previous, self._previous = self._previous, sample
        span = (sample.at - previous.at) if previous else 0.0

        def rate(now: int, before: int) -> str:
            return f"{(now - before) / span:,.0f}" if previous and span > 0 else "-"

        flow = Table("stage", "total", "per second", title="flow", expand=True)
        for label, topic in [
            ("readings in Kafka", s.readings_topic),
            ("alerts in Kafka", s.alerts_topic),
            ("dead letters", s.deadletter_topic),
        ]:
            now = sample.totals.get(topic, 0)
            flow.add_row(label, f"{now:,}", rate(now, previous.totals.get(topic, 0) if previous else 0))
        flow.add_row(
            "readings stored", f"{sample.stored:,}", rate(sample.stored, previous.stored if previous else 0)
        )

        lag = Table("consumer group", "lag", title="consumer lag", expand=True)
        for group, behind in sorted(sample.lag.items()):
            lag.add_row(group, f"{behind:,}")

        incidents = Table("device", "rule", "severity", "status", "peak", title="open incidents", expand=True)
        for device_id, rule_id, severity, status, peak, _opened in sample.incidents:
            style = "bold red" if severity == "critical" else "yellow"
            incidents.add_row(device_id, rule_id, f"[{style}]{severity}[/]", status, f"{peak:.1f}")

        notes = Table("time", "notification", title="latest notifications", expand=True)
        for delivery in self.receiver.deliveries[-8:][::-1]:
            notes.add_row(
                time.strftime("%H:%M:%S", time.localtime(delivery.received_at)), _describe(delivery.json)
            )

        title = (
            f"thermoflow demo: {self.devices} devices, {elapsed:,.0f}s / {self.duration:,.0f}s"
            f"   incidents opened {sample.incident_counts.get('opened', 0)}"
            f", resolved {sample.incident_counts.get('resolved', 0)}"
            f"   notifications {len(self.receiver.deliveries)}"
        )
        return Group(Panel(Group(flow, lag), title=title), incidents, notes)


def _scalar(conn: psycopg.Connection[Any], query: str, *params: Any) -> int:
    row = conn.execute(query.encode(), params).fetchone()
    return int(row[0]) if row else 0


def _describe(payload: Any) -> str:
    if not isinstance(payload, dict):
        return str(payload)[:80]
    fields = ("transition", "severity", "device_id", "rule_id", "value")
    parts = [str(payload[k]) for k in fields if k in payload]
    incident = payload.get("incident")
    if isinstance(incident, dict):
        parts += [str(incident[k]) for k in ("device_id", "rule_id", "severity") if k in incident]
    return " ".join(parts) or json.dumps(payload)[:80]


async def run_demo(
    settings: ThermoflowSettings, *, workdir: Path, devices: int, duration: float, seed: int, live: bool
) -> dict[str, Any]:
    """Run the pipeline and a fleet for ``duration`` seconds; returns the summary it prints."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    await kafka.ensure_topics(settings, {settings.readings_topic: 12, settings.alerts_topic: 6,
                                         settings.deadletter_topic: 3})  # fmt: skip
    await asyncio.to_thread(db.migrate, settings)
    demo = DemoRun(settings=settings, workdir=workdir, devices=devices, duration=duration, seed=seed)
    await demo.receiver.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    (workdir / "pipeline.log").unlink(missing_ok=True)
    pipeline = await demo.start(["run", "--status-file", str(workdir / "run-status.json")], "pipeline.log")
    # Messages published before the bridge's first subscription would have nowhere to go.
    await _wait_for_line(workdir / "pipeline.log", "mqtt_subscribed", timeout=60)
    fleet = await demo.start(
        ["simulate", "--devices", str(devices), "--rate", "1", "--duration", str(duration),
         "--seed", str(seed), "--incident-gap", str(RESOLVE_AFTER_S), "--anomaly-rate", "10",
         "--report", str(demo.report_path), "--measure", "--quiet"],
        "simulator.log",
    )  # fmt: skip
    started = time.monotonic()
    try:
        async with kafka_observer(settings) as observer:
            with (
                Live(console=demo.console, auto_refresh=False, transient=False)
                if live
                else contextlib.nullcontext() as view
            ):
                while not stop.is_set() and fleet.returncode is None:
                    sample = await demo.sample(observer)
                    if view is not None:
                        view.update(demo.view(sample, time.monotonic() - started), refresh=True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), REFRESH_S)
                await _drain(observer, demo, stop)
                final = await demo.sample(observer)
    finally:
        for proc in (fleet, pipeline):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (fleet, pipeline):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 45)
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
        await demo.receiver.stop()
    return summarize(demo, final)


async def _wait_for_line(log: Path, needle: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in await asyncio.to_thread(log.read_text, errors="replace"):
            return
        await asyncio.sleep(0.3)
    raise RuntimeError(f"the pipeline did not start within {timeout:.0f}s: see {log}")


async def _drain(observer: KafkaObserver, demo: DemoRun, stop: asyncio.Event) -> None:
    """After the fleet stops, let the consumers catch up (lag 0) and the run's incidents
    resolve (``resolve_after`` after their last breach), unless interrupted."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        lag = await observer.lag([demo.settings.readings_topic, demo.settings.alerts_topic])
        _, _, counts = await asyncio.to_thread(demo.query_database)
        if lag and not any(lag.values()) and counts.get("opened") == counts.get("resolved"):
            return
        await asyncio.sleep(REFRESH_S)


def summarize(demo: DemoRun, final: Sample) -> dict[str, Any]:
    """This run's figures: from the simulator's report (checked against Kafka and the database)."""
    report: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        report = json.loads(demo.report_path.read_text())
    database = (report.get("delivery") or {}).get("database") or {}
    alerts = report.get("alerts") or {}
    stored_latency = (report.get("latency") or {}).get("publish_to_stored") or {}
    return {
        "readings published": report.get("published"),
        "readings stored": database.get("rows", final.stored),
        "readings lost / doubled": f"{database.get('lost')} / {database.get('duplicates')}",
        "dead letters (malformed on purpose)": ((report.get("delivery") or {}).get("deadletter") or {}).get(
            "received"
        ),
        "incidents opened / resolved": f"{final.incident_counts.get('opened')} / "
        f"{final.incident_counts.get('resolved')}",
        "notifications": len(demo.receiver.deliveries),
        "alert precision / recall": f"{alerts.get('precision')} / {alerts.get('recall')}",
        "p99 publish -> stored row": f"{stored_latency.get('p99_ms')} ms",
        "report": str(demo.report_path),
        "logs": str(demo.workdir),
    }
