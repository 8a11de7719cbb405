"""`thermoflow demo`: the whole pipeline, a demo fleet and a live view, on the local stack.

The pipeline runs under `thermoflow run` and the fleet under `thermoflow simulate`, both as
child processes (:class:`thermoflow.pipeline_run.PipelineRun`) with their logs in the demo's
folder; notifications go to a webhook receiver inside this process, so the view shows the
latest ones. When the fleet is done (or on Ctrl-C) the consumers catch up, the run's
incidents resolve, everything stops, and a summary of this run is printed. The view and the
summary count from the start of this run (:class:`RunStart`), not from the stack's first:
earlier runs on the same stack are not in them.

The operator console (`thermoflow console`) is served from this process for as long as the demo
runs, on port 8080 unless it is taken (then on a free one, and the view says so). Its login is
any operator name with THERMOFLOW_CONSOLE_TOKEN, or, when that is not set, a token made for this
run: it is shown in the live view only, never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from thermoflow import db
from thermoflow.alerts.notification import describe as describe_condition
from thermoflow.component import STOP_SIGNALS
from thermoflow.console.app import serving
from thermoflow.console.settings import ConsoleSettings
from thermoflow.observe import Baseline, KafkaObserver, kafka_observer
from thermoflow.pipeline_run import PipelineRun
from thermoflow.settings import ThermoflowSettings
from thermoflow.simulator.report import detection_summary
from thermoflow.webhook_receiver import Delivery

REFRESH_S = 1.0
RESOLVE_AFTER_S = 20.0  # a demo is short: incidents resolve after 20 quiet seconds, not 5 minutes
DRAIN_TIMEOUT_S = 90.0
ANOMALY_RATE = 10.0  # per device-hour: the demo fleet's 200 devices x 120 s inject about 50
#: The summary's threshold row: the vectorized threshold check against its scalar reference, not how
#: much of what went wrong with the fleet was caught (that is the ``anomalies caught`` rows).
THRESHOLD_CHECK = "threshold alerts precision / recall (vs scalar rules)"


#: The name the view suggests for the console's login (the token logs in any name).
CONSOLE_USER = "demo"


@dataclass(frozen=True)
class ConsoleAt:
    """Where the demo's console answers and how to log in, as the live view shows it."""

    url: str
    token: str
    #: Why the URL is not on the port asked for ('' when it is).
    moved: str = ""

    def lines(self) -> list[str]:
        """
        >>> ConsoleAt("http://127.0.0.1:8080/", "t0k").lines()
        ['console http://127.0.0.1:8080/   log in: any name (e.g. demo), password t0k']
        """
        login = f"log in: any name (e.g. {CONSOLE_USER}), password {self.token}"
        return [f"console {self.url}   {login}"] + ([self.moved] if self.moved else [])


def console_settings(run: PipelineRun) -> ConsoleSettings:
    """The console on the run's database, topics and groups; host, port and token from the
    environment (THERMOFLOW_CONSOLE_*) as for `thermoflow console`, else 127.0.0.1:8080 and a
    token made for this run."""
    names = run.names
    groups = {
        part: names.get(f"THERMOFLOW_{part.upper()}_GROUP", f"thermoflow-{default}")
        for part, default in [("processor", "processors"), ("sink", "sink"), ("store", "alerts-store"),
                              ("notify", "alerts-notify")]
    }  # fmt: skip
    overrides: dict[str, Any] = {
        **run.settings.model_dump(),
        "console_groups": ",".join(groups.values()),
        "sink_group": groups["sink"],
    }
    if "THERMOFLOW_NOTIFIER_STATE_TOPIC" in names:
        overrides["notifier_state_topic"] = names["THERMOFLOW_NOTIFIER_STATE_TOPIC"]
    settings = ConsoleSettings(**overrides)
    if not settings.console_token:
        settings = settings.model_copy(update={"console_token": SecretStr(secrets.token_urlsafe(12))})
    return settings


async def open_console(
    stack: contextlib.AsyncExitStack, settings: ConsoleSettings, *, background: bool = True
) -> ConsoleAt:
    """Serve the console until ``stack`` closes: on its port, or on a free one when that is taken."""
    token = settings.console_token.get_secret_value() if settings.console_token else ""
    try:
        return ConsoleAt(await stack.enter_async_context(serving(settings, background=background)), token)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
    url = await stack.enter_async_context(
        serving(settings.model_copy(update={"console_port": 0}), background=background)
    )
    moved = f"port {settings.console_port} is taken (another program listens on it): the console is on {url}"
    return ConsoleAt(url, token, moved)


#: Incidents about a device; the others are the pipeline's own (``ingest_silent`` and such).
DEVICE_KINDS = ("threshold", "offline", "stuck", "rate", "outlier")


@dataclass(frozen=True)
class RunStart:
    """When this run began and where its Kafka topics ended then: what the view counts from.

    Without it a topic's size is every record it ever held, and a demo on a stack that has run
    before showed "readings in Kafka 99,865" against "readings stored 34,214", which reads as loss.
    """

    at: float  # epoch seconds: database rows and incidents from then on are this run's
    kafka: Baseline = field(default_factory=Baseline)


async def run_start(settings: ThermoflowSettings) -> RunStart:
    """Now, and the readings and dead-letter topics' ends now (before the pipeline starts)."""
    at = time.time()
    async with kafka_observer(settings) as observer:
        kafka = await observer.baseline([settings.readings_topic, settings.deadletter_topic])
    return RunStart(at, kafka)


@dataclass
class Stored:
    """What the database holds of this run: rows, alert events, incidents."""

    readings: int = 0
    alerts: int = 0
    open_incidents: list[tuple[Any, ...]] = field(default_factory=list)
    opened: int = 0  # device incidents opened since the run began
    resolved: int = 0  # of those, the resolved ones
    # Of those, the open ones as "device kind", offline last: an offline incident ends only when its
    # device publishes again, so one whose dropout outlasted the fleet stays open.
    still_open: list[str] = field(default_factory=list)
    pipeline: int = 0  # pipeline incidents opened since the run began: ingest_silent once the fleet stops


@dataclass
class Sample:
    """What the view shows at one moment."""

    at: float
    totals: dict[str, int]  # records per topic since the run began
    lag: dict[str, int]
    stored: Stored


def _scalar(conn: psycopg.Connection[Any], query: str, *params: Any) -> int:
    row = conn.execute(query.encode(), params).fetchone()
    return int(row[0]) if row else 0


def query_database(settings: ThermoflowSettings, since: float) -> Stored:
    """Rows and alert events stored and incidents opened/resolved since ``since``, and the open incidents.

    Device incidents and the pipeline's are counted apart: when the fleet stops, the whole ingest
    goes silent, and that ``ingest_silent`` incident rightly stays open until readings come back.
    """
    try:
        with db.connect(settings) as conn:
            stored = _scalar(conn, "SELECT count(*) FROM readings WHERE stored_at >= to_timestamp(%s)", since)
            # Counted where they are stored: telemetry.alerts also carries the processors' watermarks.
            alerts_stored = _scalar(
                conn, "SELECT count(*) FROM alert_events WHERE detected_at >= to_timestamp(%s)", since
            )
            open_incidents = conn.execute(
                "SELECT device_id, rule_id, kind, severity, status, condition, peak_value, threshold, metric"
                " FROM incidents"
                " WHERE status <> 'resolved' ORDER BY severity DESC, opened_at DESC LIMIT 12"
            ).fetchall()
            since_run = "SELECT count(*) FROM incidents WHERE opened_at >= to_timestamp(%s) AND kind"
            kinds = list(DEVICE_KINDS)
            opened = _scalar(conn, f"{since_run} = ANY(%s)", since, kinds)
            resolved = _scalar(conn, f"{since_run} = ANY(%s) AND status = 'resolved'", since, kinds)
            pipeline = _scalar(conn, f"{since_run} <> ALL(%s)", since, kinds)
            still_open = [
                f"{device_id} {kind}"
                for device_id, kind in conn.execute(
                    "SELECT device_id, kind FROM incidents WHERE opened_at >= to_timestamp(%s)"
                    " AND kind = ANY(%s) AND status <> 'resolved' ORDER BY kind = 'offline', opened_at",
                    (since, kinds),
                )
            ]
    except psycopg.Error:
        return Stored()  # tables not there yet: the consumers are still starting
    return Stored(
        readings=stored, alerts=alerts_stored, open_incidents=open_incidents, opened=opened,
        resolved=resolved, still_open=still_open, pipeline=pipeline,
    )  # fmt: skip


async def take_sample(run: PipelineRun, observer: KafkaObserver, start: RunStart) -> Sample:
    """This run's records in Kafka and rows in the database, and the consumers' lag, now."""
    s = run.settings
    totals = await observer.end_offsets([s.readings_topic, s.deadletter_topic], since=start.kafka)
    lag = await observer.lag([s.readings_topic, s.alerts_topic])
    stored = await asyncio.to_thread(query_database, s, start.at)
    return Sample(time.monotonic(), totals, lag, stored)


def describe(delivery: Delivery) -> str:
    """One notification in a line: what happened to which incident, its worst value in its kind's unit."""
    n = delivery.json if isinstance(delivery.json, dict) else {}
    fields = ("transition", "severity", "device_id", "rule_id")
    words = [str(n[k]) for k in fields if k in n]
    with contextlib.suppress(KeyError, TypeError, ValueError):
        words.append(
            describe_condition(
                condition=n["condition"],
                value=float(n["peak_value"]),
                threshold=float(n["threshold"]),
                metric=str(n.get("metric", "temperature")),
            )
        )
    return " ".join(words) or delivery.body.decode(errors="replace")[:80]


def render(
    run: PipelineRun, sample: Sample, previous: Sample | None, *, title: str, console: ConsoleAt | None = None
) -> Group:
    s = run.settings
    span = sample.at - previous.at if previous else 0.0

    def rate(now: int, before: int | None) -> str:
        return f"{(now - before) / span:,.0f}" if before is not None and span > 0 else "-"

    flow = Table("stage", "this run", "per second", title="flow since this run began", expand=True)
    for label, topic in [("readings in Kafka", s.readings_topic), ("dead letters", s.deadletter_topic)]:
        now = sample.totals.get(topic, 0)
        flow.add_row(label, f"{now:,}", rate(now, previous.totals.get(topic, 0) if previous else None))
    now_db, before_db = sample.stored, previous.stored if previous else None
    for label, value, before in [
        ("readings stored", now_db.readings, before_db.readings if before_db else None),
        ("alert events stored", now_db.alerts, before_db.alerts if before_db else None),
    ]:
        flow.add_row(label, f"{value:,}", rate(value, before))
    lag = Table("consumer group", "lag", title="consumer lag", expand=True)
    for group, behind in sorted(sample.lag.items()):
        lag.add_row(group, f"{behind:,}")
    incidents = Table(
        "device", "rule", "kind", "severity", "status", "worst", title="open incidents", expand=True
    )
    for (
        device_id,
        rule_id,
        kind,
        severity,
        status,
        condition,
        peak,
        threshold,
        metric,
    ) in sample.stored.open_incidents:
        style = "bold red" if severity == "critical" else "yellow"
        worst = describe_condition(condition=condition, value=peak, threshold=threshold, metric=metric)
        incidents.add_row(device_id, rule_id, kind, f"[{style}]{severity}[/]", status, worst)
    notes = Table("time", "notification", title="latest notifications", expand=True)
    for delivery in run.receiver.deliveries[-8:][::-1]:
        notes.add_row(time.strftime("%H:%M:%S", time.localtime(delivery.received_at)), describe(delivery))
    parts: list[Any] = [flow, lag]
    if console is not None:
        parts.insert(0, "\n".join(console.lines()))
    return Group(Panel(Group(*parts), title=title), incidents, notes)


async def run_demo(
    run: PipelineRun,
    *,
    devices: int,
    duration: float,
    seed: int,
    live: bool,
    console: Console,
    anomaly_rate: float = ANOMALY_RATE,
    anomaly_schedule: Path | None = None,
    with_console: bool = True,
) -> dict[str, Any]:
    """Run the pipeline and a fleet for ``duration`` seconds; returns the summary of this run.

    With ``with_console``, the operator console serves the run from its start to its end
    (:func:`console_settings`, :func:`open_console`); the view shows its URL and login.

    ``run`` is :func:`demo_run` for `thermoflow demo` (the local stack's default names). The
    fleet injects ``anomaly_rate`` anomalies per device-hour, plus those of ``anomaly_schedule``
    (the simulator's ``--anomaly-schedule`` file), if given. The simulator's report is in
    ``run.workdir / "report.json"``.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:  # SIGHUP too: a closed terminal stops the demo and all it started
        loop.add_signal_handler(sig, stop.set)
    fleet: asyncio.Task[dict[str, Any]] | None = None
    report: dict[str, Any] = {}
    began: list[RunStart] = []
    served = contextlib.AsyncExitStack()
    console_at: list[ConsoleAt] = []

    async def begin() -> None:
        began.append(await run_start(run.settings))  # before anything of this run reaches Kafka
        # `thermoflow run` stops its components when this process ends, even by SIGKILL.
        await run.start("--exit-with-parent")
        if with_console:  # after run.start: the database's migrations are applied
            console_at.append(await open_console(served, console_settings(run)))
            if not live:
                console.print("\n".join(console_at[0].lines()))

    try:
        if not await until_stopped(begin(), stop):
            return {}
        start = began[0]
        fleet_args = ["--devices", str(devices), "--rate", "1", "--duration", str(duration),
                      "--seed", str(seed), "--anomaly-rate", str(anomaly_rate)]  # fmt: skip
        if anomaly_schedule is not None:
            fleet_args += ["--anomaly-schedule", str(anomaly_schedule)]
        fleet = asyncio.create_task(run.simulate(*fleet_args))
        started = time.monotonic()
        async with kafka_observer(run.settings) as observer:
            previous: Sample | None = None
            view = Live(console=console, auto_refresh=False) if live else None
            with view or contextlib.nullcontext():
                while not stop.is_set() and not fleet.done():
                    sample = await take_sample(run, observer, start)
                    title = (
                        f"thermoflow demo: {devices} devices,"
                        f" {time.monotonic() - started:,.0f}s / {duration:,.0f}s"
                        f"   incidents opened {sample.stored.opened}, resolved {sample.stored.resolved}"
                        f"   notifications {len(run.receiver.deliveries)}"
                    )
                    if view is not None:
                        shown = render(
                            run, sample, previous, title=title, console=next(iter(console_at), None)
                        )
                        view.update(shown, refresh=True)
                    previous = sample
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop.wait()), REFRESH_S)
                if fleet.done():
                    report = fleet.result()
                    await settle(run, observer, start, stop)
            final = await take_sample(run, observer, start)
    finally:  # also when the pipeline failed to start: nothing it started may stay behind
        if fleet is not None and not fleet.done():
            fleet.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await fleet
        await served.aclose()  # the console first: its readers of the run's topics stop with it
        await run.stop()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    return summarize(
        report, final, notifications=len(run.receiver.deliveries), workdir=run.workdir,
        readings_topic=run.settings.readings_topic,
    )  # fmt: skip


async def until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Await ``work`` unless ``stop`` is set first (then cancel it); True if it finished."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()  # its error, if it failed
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def demo_run(settings: ThermoflowSettings, workdir: Path) -> PipelineRun:
    """The demo's pipeline: the settings' topics and the default groups, short incidents."""
    return PipelineRun(settings, workdir, resolve_after=RESOLVE_AFTER_S)


async def settle(run: PipelineRun, observer: KafkaObserver, start: RunStart, stop: asyncio.Event) -> None:
    """Let the consumers catch up (lag 0) and this run's incidents resolve, unless interrupted.

    Offline incidents are not waited for: a device whose dropout outlasted the fleet never comes back.
    """
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        sample = await take_sample(run, observer, start)
        if sample.lag and not any(sample.lag.values()) and not _resolving(sample.stored.still_open):
            return
        await asyncio.sleep(REFRESH_S)


def _resolving(still_open: list[str]) -> list[str]:
    """The open incidents that will resolve by quiet time: all but offline ones (those wait for their
    device, which may have stopped for good with the fleet; a device back clears its own at once)."""
    return [incident for incident in still_open if not incident.endswith(" offline")]


def summarize(
    report: dict[str, Any], final: Sample, *, notifications: int, workdir: Path, readings_topic: str
) -> dict[str, Any]:
    """This run's figures, from the simulator's report (checked against Kafka and the database)."""
    delivery = report.get("delivery") or {}
    database = delivery.get("database") or {}
    alerts = report.get("alerts") or {}
    stored_latency = (report.get("latency") or {}).get("publish_to_stored") or {}
    return {
        "readings published": report.get("published"),
        "readings in Kafka": final.totals.get(readings_topic, 0),
        "readings stored": database.get("rows", final.stored.readings),
        "readings lost / doubled": f"{database.get('lost')} / {database.get('duplicates')}",
        "dead letters (malformed on purpose)": (delivery.get("deadletter") or {}).get("received"),
        "incidents opened / resolved": f"{final.stored.opened} / {final.stored.resolved}",
        "device incidents still open": ", ".join(final.stored.still_open[:12]) or "none",
        "pipeline incidents (ingest silent once the fleet stopped)": final.stored.pipeline,
        "notifications": notifications,
        THRESHOLD_CHECK: f"{alerts.get('precision')} / {alerts.get('recall')}",
        **detection_summary(report.get("anomaly_detection")),
        "p99 publish -> stored row": f"{stored_latency.get('p99_ms')} ms",
        "logs and report": str(workdir),
    }
