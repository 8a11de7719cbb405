"""The `thermoflow alerts` commands: `store`, `notify`, `list`, `ack`."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from datetime import UTC
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from thermoflow import reach
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.component import run_until_signal
from thermoflow.logs import configure_logging
from thermoflow.settings import load_settings

alerts_app = typer.Typer(
    help="Alert events and incidents: store, notify, list, acknowledge.", no_args_is_help=True
)
# Piped output gets room for whole ids and timestamps instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)

# Flags are named after their settings (docs/configuration.md): --alerts-topic is THERMOFLOW_ALERTS_TOPIC.
AlertsTopic = Annotated[str | None, typer.Option(help="source topic (default: telemetry.alerts)")]
ResolveAfter = Annotated[
    float | None, typer.Option(help="seconds without a breach before an incident resolves (default: 300)")
]
LogLevel = Annotated[str, typer.Option(help="log level")]


@alerts_app.command("store")
def store_command(
    alerts_topic: AlertsTopic = None,
    store_group: Annotated[
        str | None, typer.Option(help="consumer group (default: thermoflow-alerts-store)")
    ] = None,
    store_batch_size: Annotated[
        int | None, typer.Option(help="most alert events per transaction (default: 20000)")
    ] = None,
    resolve_after: ResolveAfter = None,
    sweep_interval: Annotated[
        float | None, typer.Option(help="seconds between resolve sweeps (default: 5)")
    ] = None,
    database_url: Annotated[str | None, typer.Option(help="PostgreSQL URL")] = None,
    kafka_bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Store alert events once each and keep incidents (runs until SIGTERM/SIGINT)."""
    settings = load_settings(
        AlertsSettings, alerts_topic=alerts_topic, store_group=store_group, store_batch_size=store_batch_size,
        resolve_after=resolve_after, sweep_interval=sweep_interval, database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
    )  # fmt: skip
    configure_logging(level=log_level, component="alerts.store")
    from thermoflow.alerts.store import AlertStore

    run_until_signal(AlertStore(settings).run, grace=settings.shutdown_grace)


@alerts_app.command("notify")
def notify_command(
    alerts_topic: AlertsTopic = None,
    notify_group: Annotated[
        str | None, typer.Option(help="consumer group (default: thermoflow-alerts-notify)")
    ] = None,
    notify_routes: Annotated[
        Path | None,
        typer.Option(help="routing YAML: channels and the severities each gets (default: log only)"),
    ] = None,
    resolve_after: ResolveAfter = None,
    repeat_interval: Annotated[
        float | None, typer.Option(help="seconds between repeats while an incident fires (default: 3600)")
    ] = None,
    kafka_bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Notify channels when incidents fire, escalate, repeat and resolve (runs until SIGTERM/SIGINT)."""
    settings = load_settings(
        AlertsSettings, alerts_topic=alerts_topic, notify_group=notify_group, notify_routes=notify_routes,
        resolve_after=resolve_after, repeat_interval=repeat_interval, kafka_bootstrap=kafka_bootstrap,
    )  # fmt: skip
    from thermoflow.alerts.notifier import Notifier, build_channels, load_routes

    # Fail fast on a bad routing file or missing secret, before connecting to anything.
    channels = build_channels(load_routes(settings), timeout=settings.notify_timeout)

    async def close_all() -> None:
        for channel in channels.values():
            await channel.close()

    asyncio.run(close_all())
    configure_logging(level=log_level, component="alerts.notify")
    run_until_signal(Notifier(settings).run, grace=settings.shutdown_grace)


@alerts_app.command("list")
def list_command(
    open_only: Annotated[bool, typer.Option("--open", help="only firing and acknowledged incidents")] = False,
    device: Annotated[str | None, typer.Option("--device", help="only this device")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
    database_url: Annotated[str | None, typer.Option(help="PostgreSQL URL")] = None,
) -> None:
    """List incidents, newest first."""
    from thermoflow import db
    from thermoflow.alerts.notification import describe
    from thermoflow.alerts.queries import list_incidents

    settings = load_settings(AlertsSettings, database_url=database_url)
    configure_logging(level="WARNING", component="alerts")  # logs to stderr: stdout is the answer
    with reach.needs(reach.database(settings)):
        db.migrate(settings)
        with db.connect(settings) as conn:
            rows = list_incidents(conn, open_only=open_only, device_id=device, limit=limit)
    if as_json:
        for row in rows:
            typer.echo(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v)
                                   for k, v in row.__dict__.items()}))  # fmt: skip
        return
    table = Table(
        "incident",
        "device",
        "rule",
        "kind",
        "severity",
        "status",
        "opened (UTC)",
        "last breach (UTC)",
        "worst",
        "alerts",
    )
    for row in rows:
        worst = describe(
            condition=row.condition, value=row.peak_value, threshold=row.threshold, metric=row.metric
        )
        table.add_row(
            row.incident_id, row.device_id, row.rule_id, row.kind, row.severity, row.status,
            f"{row.opened_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            f"{row.last_breach_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            worst, str(row.breach_count),
        )  # fmt: skip
    console.print(table)


@alerts_app.command("ack")
def ack_command(
    incident_id: Annotated[str, typer.Argument(help="the incident to acknowledge")],
    by: Annotated[str | None, typer.Option(help="who acknowledges it (default: the current user)")] = None,
    note: Annotated[
        str, typer.Option(help="why, or what is being done (at most 1,000 characters, plain text)")
    ] = "",
    alerts_topic: AlertsTopic = None,
    database_url: Annotated[str | None, typer.Option(help="PostgreSQL URL")] = None,
    kafka_bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
) -> None:
    """Acknowledge a firing incident: the notifier tells the channels once and stops repeating it.

    It still resolves on its own; an escalation re-fires it. Acknowledging it again changes nothing.
    """
    from thermoflow import db
    from thermoflow.alerts.ack import acknowledge_incident
    from thermoflow.alerts.queries import AckError

    settings = load_settings(
        AlertsSettings, alerts_topic=alerts_topic, database_url=database_url, kafka_bootstrap=kafka_bootstrap
    )
    configure_logging(level="WARNING", component="alerts")
    with reach.needs(reach.database(settings)):
        db.migrate(settings)
    try:
        done = acknowledge_incident(settings, incident_id, by=by or getpass.getuser(), note=note)
    except AckError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    row = done.incident
    at = f"{row.acknowledged_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if row.acknowledged_at else "?"
    what = "acknowledged" if done.new else "was already acknowledged"
    who = f"{what} by {row.acknowledged_by} at {at}"
    typer.echo(f"incident {row.incident_id} ({row.device_id} {row.rule_id}) {who}")
    if row.ack_note:
        typer.echo(f"note: {row.ack_note}")


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `thermoflow` app."""
    app.add_typer(alerts_app, name="alerts")
