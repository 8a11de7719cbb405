"""`thermoflow simulate`: the device fleet and load tester (see simulator/run.py and report.py)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live

from thermoflow.component import tune_gc
from thermoflow.rules import RulesError
from thermoflow.settings import ConfigError, load_settings
from thermoflow.simulator.anomalies import AnomalyError


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `thermoflow` app."""
    app.command("simulate")(simulate_command)


def simulate_command(
    devices: Annotated[int | None, typer.Option(help="number of devices (default: 100)")] = None,
    rate: Annotated[float | None, typer.Option(help="readings per second per device (default: 1)")] = None,
    total_rate: Annotated[float | None, typer.Option(help="readings per second over the fleet")] = None,
    duration: Annotated[
        float | None, typer.Option(help="seconds to publish (default: until stopped)")
    ] = None,
    qos: Annotated[int | None, typer.Option(help="MQTT QoS, 0 or 1 (default: 1)")] = None,
    payload_format: Annotated[
        str | None, typer.Option("--format", help="payload format: json, number or senml (default: json)")
    ] = None,
    topic_template: Annotated[
        str | None, typer.Option(help="MQTT topic per device (default: sensors/{device_id}/{metric})")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: 1)")] = None,
    profiles: Annotated[
        str | None, typer.Option(help="profile mix, e.g. freezer=2,rack (default: all five, equal shares)")
    ] = None,
    time_scale: Annotated[
        float | None, typer.Option(help="simulated seconds per second, for the daily cycle (default: 1)")
    ] = None,
    anomaly_rate: Annotated[
        float | None, typer.Option(help="anomalies per device per hour (default: 2)")
    ] = None,
    anomaly_kinds: Annotated[
        str | None,
        typer.Option(
            help="kinds sharing --anomaly-rate: spike,drift,stuck,dropout,flapping,malformed with"
            " optional shares (spike=3,malformed=1), all, none (default: all: spike 3, others 1)"
        ),
    ] = None,
    anomaly_schedule: Annotated[
        Path | None, typer.Option(help="YAML list of {kind, device, at, duration, magnitude}")
    ] = None,
    rules: Annotated[
        Path | None, typer.Option(help="rules file for the ground truth (default: processors/rules.yaml)")
    ] = None,
    incident_gap: Annotated[
        float | None,
        typer.Option(help="max seconds between breaches of one episode (default: max(30, 3/rate))"),
    ] = None,
    detection_grace: Annotated[
        float | None,
        typer.Option(
            help="seconds after an anomaly's end in which an incident still detects it (default: 30)"
        ),
    ] = None,
    connections: Annotated[
        int | None, typer.Option(help="MQTT connections (default: 10, at most --devices)")
    ] = None,
    ramp: Annotated[
        float | None, typer.Option(help="seconds over which to open the connections (default: 0)")
    ] = None,
    inflight: Annotated[
        int | None, typer.Option(help="QoS 1 in-flight window per connection (default: 256)")
    ] = None,
    max_backlog: Annotated[
        int | None, typer.Option(help="queued publishes before the pacer holds back (default: 200000)")
    ] = None,
    client_prefix: Annotated[
        str | None, typer.Option(help="MQTT client id prefix (default: thermoflow-sim-<pid>-<random>)")
    ] = None,
    mqtt_url: Annotated[str | None, typer.Option(help="MQTT broker URL")] = None,
    kafka_bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers (--measure)")] = None,
    database_url: Annotated[str | None, typer.Option(help="PostgreSQL URL (--measure)")] = None,
    readings_topic: Annotated[str | None, typer.Option(help="Kafka readings topic (--measure)")] = None,
    alerts_topic: Annotated[str | None, typer.Option(help="Kafka alerts topic (--measure)")] = None,
    deadletter_topic: Annotated[str | None, typer.Option(help="Kafka dead-letter topic (--measure)")] = None,
    measure: Annotated[
        bool, typer.Option(help="measure the pipeline: Kafka topics and the readings table")
    ] = False,
    measure_timeout: Annotated[
        float, typer.Option(help="seconds to wait for the pipeline to catch up after publishing")
    ] = 60.0,
    report: Annotated[Path | None, typer.Option(help="write the JSON report here")] = None,
    ground_truth: Annotated[
        Path | None, typer.Option(help="write the ground truth here (default: next to --report, .truth.json)")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of rate and latency over time")] = None,
    quiet: Annotated[bool, typer.Option(help="no live display and no summary")] = False,
    log_level: Annotated[str, typer.Option(help="log level")] = "INFO",
) -> None:
    """Simulate a device fleet over MQTT, and measure what the pipeline does with it."""
    from thermoflow.logs import configure_logging
    from thermoflow.simulator.run import Controls, Outputs, simulate
    from thermoflow.simulator.settings import SimulatorSettings

    configure_logging(level=log_level, component="simulator")
    flags: dict[str, Any] = {
        "devices": devices,
        "rate": rate,
        "total_rate": total_rate,
        "duration": duration,
        "qos": qos,
        "format": payload_format,
        "topic_template": topic_template,
        "seed": seed,
        "profiles": profiles,
        "time_scale": time_scale,
        "anomaly_rate": anomaly_rate,
        "anomaly_kinds": anomaly_kinds,
        "anomaly_schedule": anomaly_schedule,
        "rules": rules,
        "incident_gap": incident_gap,
        "detection_grace": detection_grace,
        "connections": connections,
        "ramp": ramp,
        "inflight": inflight,
        "max_backlog": max_backlog,
        "client_prefix": client_prefix,
        "mqtt_url": mqtt_url,
        "kafka_bootstrap": kafka_bootstrap,
        "database_url": database_url,
        "readings_topic": readings_topic,
        "alerts_topic": alerts_topic,
        "deadletter_topic": deadletter_topic,
    }
    settings = load_settings(SimulatorSettings, **flags)
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'thermoflow[plot]'") from None
    outputs = Outputs(
        report=report, ground_truth=ground_truth, plot=plot, measure=measure, measure_timeout=measure_timeout
    )
    console = Console(stderr=True)
    interactive = not quiet and console.is_terminal

    async def main() -> dict[str, Any]:
        controls = Controls()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, controls.signal)
        try:
            if not interactive:
                return await simulate(settings, outputs, controls)
            from thermoflow.simulator.report import live_view

            with Live(console=console, refresh_per_second=4, transient=True) as live:

                def view(phase: str, sample: Any) -> None:
                    live.update(
                        live_view(
                            sample,
                            target_rate=settings.fleet_rate,
                            duration=settings.duration,
                            connections=settings.connection_count,
                            phase=phase,
                        )
                    )

                return await simulate(settings, outputs, controls, view)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    tune_gc()  # the fleet allocates per reading, like the pipeline's components
    try:
        result = asyncio.run(main())
    except (RulesError, AnomalyError) as exc:
        raise ConfigError(str(exc)) from None
    if not quiet:
        from thermoflow.simulator.report import print_summary

        print_summary(Console(file=sys.stdout), result)
