"""The `thermoflow` command: one entry point, a sub-command per component (DESIGN.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from thermoflow import db, kafka, reach, readings_query, rollups, run_plan
from thermoflow.settings import ConfigError, ThermoflowSettings, load_settings
from thermoflow.stack import ServiceError, Stack, StackConfig
from thermoflow.stack import check as stack_check

app = typer.Typer(
    name="thermoflow",
    help="An IoT temperature-telemetry pipeline: MQTT -> Kafka -> functions -> alerts and PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(
    help="The local services: Mosquitto, Kafka (KRaft, single node), PostgreSQL.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")

console = Console()
errors = Console(stderr=True)

StateDir = Annotated[
    Path,
    typer.Option("--state-dir", envvar="THERMOFLOW_STACK_DIR", help="where the stack keeps data and logs"),
]


def _config(state_dir: Path, **given: Any) -> StackConfig:
    """Flags given now, else what the stack was last started with, else the defaults."""
    saved = StackConfig.saved(state_dir.resolve())
    base = saved.__dict__ if saved else {}
    values = {**base, **{k: v for k, v in given.items() if v is not None}, "state_dir": state_dir}
    try:
        return StackConfig(**values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@stack_app.command("up")
def stack_up(
    state_dir: StateDir = Path(".thermoflow/stack"),
    host: Annotated[str | None, typer.Option(help="address the services listen on [127.0.0.1]")] = None,
    mqtt_port: Annotated[int | None, typer.Option(help="Mosquitto's port [1883]")] = None,
    kafka_port: Annotated[int | None, typer.Option(help="Kafka's client port [9092]")] = None,
    kafka_controller_port: Annotated[
        int | None, typer.Option(help="Kafka's KRaft controller port [9093]")
    ] = None,
    postgres_port: Annotated[int | None, typer.Option(help="PostgreSQL's port [5432]")] = None,
    readings_partitions: Annotated[
        int | None, typer.Option(help="partitions of telemetry.readings [12]")
    ] = None,
    alerts_partitions: Annotated[int | None, typer.Option(help="partitions of telemetry.alerts [6]")] = None,
    timescaledb: Annotated[
        bool | None,
        typer.Option(
            "--timescaledb/--no-timescaledb", help="preload TimescaleDB in PostgreSQL [when installed]"
        ),
    ] = None,
) -> None:
    """Start Mosquitto, Kafka and PostgreSQL (what is not running yet) and create the topics."""
    config = _config(
        state_dir,
        host=host,
        mqtt_port=mqtt_port,
        kafka_port=kafka_port,
        kafka_controller_port=kafka_controller_port,
        postgres_port=postgres_port,
        readings_partitions=readings_partitions,
        alerts_partitions=alerts_partitions,
        timescaledb=timescaledb,
    )
    stack = Stack(config)
    started = time.monotonic()
    stack.up()
    console.print(f"stack up in {time.monotonic() - started:.1f}s (state: {stack.config.state_dir})")
    settings = stack.settings()
    console.print(f"  THERMOFLOW_MQTT_URL={settings.mqtt_url}")
    console.print(f"  THERMOFLOW_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}")
    console.print(f"  THERMOFLOW_DATABASE_URL={settings.database_url_redacted}")
    console.print(f"  database: {stack.database_kind()}")


@stack_app.command("down")
def stack_down(
    state_dir: StateDir = Path(".thermoflow/stack"),
    purge: Annotated[
        bool,
        typer.Option(
            "--purge", help="also delete the stack's data: the state directory and /var/lib/thermoflow/<hash>"
        ),
    ] = False,
) -> None:
    """Stop every service the stack started; data stays in the state directory unless --purge."""
    stack = Stack(_config(state_dir))
    if not purge:
        stack.down()
        console.print("stack down")
        return
    removed = stack.purge()
    console.print("stack down, data removed: " + (", ".join(map(str, removed)) or "none was there"))


@stack_app.command("status")
def stack_status(state_dir: StateDir = Path(".thermoflow/stack")) -> None:
    """Say which services run and answer. Exits 1 unless all of them do."""
    stack = Stack(_config(state_dir))
    status = stack.status()
    table = Table("service", "status", "address")
    for service in stack.services:
        table.add_row(service.name, status[service.name], service.address)
    console.print(table)
    console.print(f"database: {stack.database_kind()}")
    if set(status.values()) != {"running"}:
        raise typer.Exit(1)


@stack_app.command("fetch")
def stack_fetch(state_dir: StateDir = Path(".thermoflow/stack")) -> None:
    """Resolve Apache Kafka's jars from Maven Central into the cache (done by `up` when needed)."""
    console.print(f"Kafka jars in {Stack(_config(state_dir)).kafka.fetch()}")


@stack_app.command("check")
def stack_check_command(state_dir: StateDir = Path(".thermoflow/stack")) -> None:
    """Send one real message through each service of a running stack."""
    settings = Stack(_config(state_dir)).settings()
    # The stack's addresses come from its saved config, not from THERMOFLOW_* settings.
    how = f"`thermoflow stack up --state-dir {state_dir}` (its ports: `thermoflow stack up --help`)"
    with reach.needs(dataclasses.replace(reach.mqtt(settings), setting=how)):
        payload = stack_check.mqtt_round_trip(settings)
    console.print(f"mqtt      {settings.mqtt_url}: QoS 1 round trip, got {payload!r}")
    with reach.needs(dataclasses.replace(reach.kafka(settings), setting=how)):
        value = asyncio.run(stack_check.kafka_round_trip(settings))
    console.print(f"kafka     {settings.kafka_bootstrap}: produce/consume round trip, got {value!r}")
    with reach.needs(dataclasses.replace(reach.database(settings), setting=how)):
        version = stack_check.postgres_round_trip(settings)
    console.print(f"postgres  {settings.database_url_redacted}: {version.split(',')[0]}")


@app.command("init")
def init_command(
    kafka_bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
    database_url: Annotated[str | None, typer.Option(help="PostgreSQL URL")] = None,
    readings_partitions: Annotated[int, typer.Option(min=1, help="partitions of the readings topic")] = 12,
    alerts_partitions: Annotated[int, typer.Option(min=1, help="partitions of the alerts topic")] = 6,
) -> None:
    """Create the pipeline's topics (the detectors' compacted state topic too, partitioned like the
    readings) and apply the database migrations (idempotent)."""
    from thermoflow.processors.settings import ProcessorSettings
    from thermoflow.processors.worker import ensure_state_topic

    settings = load_settings(ThermoflowSettings, kafka_bootstrap=kafka_bootstrap, database_url=database_url)
    processors = load_settings(ProcessorSettings, kafka_bootstrap=kafka_bootstrap, database_url=database_url)
    partitions = {
        settings.readings_topic: readings_partitions,
        settings.alerts_topic: alerts_partitions,
        settings.deadletter_topic: 3,
    }
    with reach.needs(reach.kafka(settings)):
        created = asyncio.run(kafka.ensure_topics(settings, partitions))
        created += asyncio.run(ensure_state_topic(processors))
    with reach.needs(reach.database(settings)):
        applied = db.migrate(settings)
        retention = rollups.apply_retention(settings)
    console.print(f"topics created: {', '.join(created) or 'none (all existed)'}")
    console.print(f"migrations applied: {', '.join(applied) or 'none (schema up to date)'}")
    if retention:
        console.print(
            "retention set: " + ", ".join(f"{name} {days} days" for name, days in retention.items())
        )


@app.command("readings")
def readings_command(
    device: Annotated[str, typer.Argument(metavar="DEVICE", help="the device id, e.g. freezer-0042")],
    since: Annotated[str, typer.Option(help="how far back: 90m, 24h, 7d, 2w ...")] = "24h",
    every: Annotated[
        str | None,
        typer.Option(help="one point per step: " + ", ".join(readings_query.EVERY) + " [chosen by --since]"),
    ] = None,
    metric: Annotated[str | None, typer.Option(help="only this metric, e.g. temperature [all]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    database_url: Annotated[str | None, typer.Option(help="PostgreSQL URL")] = None,
) -> None:
    """A device's history: raw rows for short ranges, the 1-minute or hourly rollup for long ones."""
    try:
        plan = readings_query.plan(device, since=since, every=every, metric=metric)
    except readings_query.QueryError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = load_settings(ThermoflowSettings, database_url=database_url)
    with reach.needs(reach.database(settings)):
        rows = rollups.history(settings, plan)
    if as_json:
        document = {
            "device_id": plan.device_id,
            "metric": plan.metric,
            "since": since,
            "every": plan.every,
            "source": plan.source,
            "rows": [{**row, "time": row["time"].isoformat()} for row in rows],
        }
        print(json.dumps(document))
        return
    title = f"{plan.device_id}, last {since}, every {plan.every} (from {plan.source})"
    if plan.step_seconds is None:
        table = Table("time", "metric", "value", title=title)
        for row in rows:
            table.add_row(f"{row['time']:%Y-%m-%d %H:%M:%S}", row["metric"], f"{row['last']:.3f}")
    else:
        table = Table(*readings_query.COLUMNS, title=title)
        for row in rows:
            values = (f"{row[name]:.3f}" for name in ("min", "max", "avg"))
            table.add_row(
                f"{row['time']:%Y-%m-%d %H:%M}",
                row["metric"],
                *values,
                str(row["count"]),
                f"{row['last']:.3f}",
            )
    console.print(table)
    if not rows:
        errors.print(f"no readings of {plan.device_id!r} in the last {since}")


@app.command("run")
def run_command(
    scale: Annotated[
        list[str] | None, typer.Option(help="instances of a component, e.g. --scale processor=2 (repeatable)")
    ] = None,
    autoscale: Annotated[
        list[str] | None,
        typer.Option(
            help="instances follow the consumer lag within MIN..MAX, e.g. --autoscale processor=1..4"
            " (processor, sink, store, notifier; repeatable), with the KEDA ScaledObjects' policy"
        ),
    ] = None,
    autoscale_lag: Annotated[
        list[str] | None,
        typer.Option(help="override a component's lag per instance, e.g. --autoscale-lag sink=1000"),
    ] = None,
    autoscale_poll: Annotated[
        float | None,
        typer.Option(
            min=0.1, envvar="THERMOFLOW_AUTOSCALE_POLL", help="seconds between lag reads [15, as KEDA's]"
        ),
    ] = None,
    autoscale_cooldown: Annotated[
        float | None,
        typer.Option(
            min=0,
            envvar="THERMOFLOW_AUTOSCALE_COOLDOWN",
            help="seconds of lower lag before instances go (one per a fifth of it) [300, as KEDA's]",
        ),
    ] = None,
    health_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="THERMOFLOW_RUN_HEALTH_TIMEOUT",
            help="kill and restart an instance whose /healthz has failed this many seconds (0: never)",
        ),
    ] = 30,
    health_startup: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="THERMOFLOW_RUN_HEALTH_STARTUP",
            help="seconds an instance gets for its first good /healthz answer",
        ),
    ] = 120,
    only: Annotated[
        str | None, typer.Option(help="comma-separated components to run: " + ", ".join(run_plan.COMPONENTS))
    ] = None,
    status_file: Annotated[
        Path | None, typer.Option(help="keep a JSON file of each instance's pid, state and restarts")
    ] = None,
    grace: Annotated[float, typer.Option(min=0, help="seconds a component gets to stop before SIGKILL")] = 30,
    exit_with_parent: Annotated[
        bool, typer.Option(help="stop (as on SIGTERM) when the process that started this one ends")
    ] = False,
) -> None:
    """Run every pipeline component as a supervised child process (Ctrl-C stops them all).

    SIGTERM, SIGINT or SIGHUP stop every component (SIGKILL after --grace; a second signal at
    once); it exits once none runs. A component dies with it even if it is SIGKILLed. One
    whose /healthz fails for --health-timeout is killed and restarted. With --autoscale, a
    component's instances rise and fall with its consumer group's lag (docs/scaling.md).
    """
    from thermoflow.logs import configure_logging
    from thermoflow.run_autoscale import autoscale_plan, group_lag
    from thermoflow.supervisor import HealthPolicy, Supervisor, die_with_parent

    try:
        only_names = [name.strip() for name in only.split(",") if name.strip()] if only else []
        scaled = autoscale_plan(
            autoscale=autoscale or [],
            lag_overrides=autoscale_lag or [],
            scale=run_plan.parse_scale(scale or []),
            only=only_names,
            poll=autoscale_poll,
            cooldown=autoscale_cooldown,
        )
        fixed = run_plan.parse_scale(scale or [])
        instances = run_plan.plan(
            scale={**fixed, **{name: s.policy.max_replicas for name, s in scaled.items()}}, only=only_names
        )
        # One port per instance on this machine: from the processors' settings, for their workers.
        from thermoflow.processors.settings import ProcessorSettings

        processors = load_settings(ProcessorSettings)
        ports = run_plan.http_ports(instances, base=processors.http_port, workers=processors.workers)
    except run_plan.PlanError as exc:
        raise ConfigError(str(exc)) from None
    configure_logging(component="run")
    if exit_with_parent:
        die_with_parent(signal.SIGTERM, parent=os.getppid())
    health = HealthPolicy(timeout=health_timeout, startup=health_startup)

    async def main() -> int:
        async with group_lag(enabled=bool(scaled)) as lag_source:
            return await Supervisor(
                instances,
                env=dict(os.environ),
                grace=grace,
                status_file=status_file,
                ports=ports,
                autoscaled=scaled,
                lag_source=lag_source,
                health=health,
            ).run()

    raise typer.Exit(asyncio.run(main()))


@app.command("demo")
def demo_command(
    duration: Annotated[float, typer.Option(min=10, help="seconds the demo fleet publishes")] = 120,
    devices: Annotated[int, typer.Option(min=1, max=10_000, help="devices in the demo fleet")] = 200,
    seed: Annotated[int, typer.Option(help="the fleet's random seed (anomalies are reproducible)")] = 7,
    state_dir: StateDir = Path(".thermoflow/stack"),
    live: Annotated[bool, typer.Option(help="show the live view (off: only the summary)")] = True,
) -> None:
    """The local stack, the whole pipeline, a demo fleet with anomalies, and a live view."""
    from thermoflow.demo import demo_run, run_demo
    from thermoflow.logs import configure_logging

    configure_logging(component="demo", level="WARNING")
    stack = Stack(_config(state_dir))
    console.print("starting the local stack ...")
    stack.up()
    summary = asyncio.run(
        run_demo(
            demo_run(stack.settings(), stack.config.state_dir.parent / "demo"),
            devices=devices,
            duration=duration,
            seed=seed,
            live=live and console.is_terminal,
            console=console,
        )
    )
    if not summary:
        console.print("demo stopped before the pipeline was up")
        raise typer.Exit(1)
    table = Table("summary", "value", title="thermoflow demo")
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)


_registered = False


def register_components() -> None:
    """Add every component's commands to the app (once)."""
    global _registered
    if _registered:
        return
    from thermoflow.alerts.cli import register as register_alerts
    from thermoflow.console.cli import register as register_console
    from thermoflow.ingest.cli import register as register_ingest
    from thermoflow.processors.cli import register as register_processors
    from thermoflow.simulator.cli import register as register_simulator

    for register in (
        register_ingest,
        register_processors,
        register_alerts,
        register_simulator,
        register_console,
    ):
        register(app)
    _registered = True


def main() -> None:
    """Entry point: user errors become one clear message and exit code 2, not a traceback."""
    register_components()
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except (ConfigError, ServiceError) as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        errors.print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # a bad flag or value: typer's click says which
        show = getattr(exc, "show", None)
        if show is None:
            raise
        show()
        sys.exit(int(getattr(exc, "exit_code", 2)))
