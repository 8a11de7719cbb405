"""`thermoflow console`: serve the operator console until SIGTERM/SIGINT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thermoflow import reach
from thermoflow.logs import configure_logging, get_logger
from thermoflow.settings import load_settings

log = get_logger(__name__)


def console_command(
    host: Annotated[str | None, typer.Option(help="address to listen on [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on [8080]")] = None,
    users_file: Annotated[
        Path | None, typer.Option(help="operators' `name:argon2-hash` lines (THERMOFLOW_CONSOLE_USERS_FILE)")
    ] = None,
    read_open: Annotated[
        bool | None,
        typer.Option(
            "--read-open/--read-closed",
            help="pages readable without a login [open on loopback only] (THERMOFLOW_CONSOLE_READ_OPEN)",
        ),
    ] = None,
    rules_file: Annotated[
        Path | None, typer.Option(help="the processors' rules file, for the rules page")
    ] = None,
    database_url: Annotated[str | None, typer.Option(help="PostgreSQL URL")] = None,
    kafka_bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
    mqtt_url: Annotated[str | None, typer.Option(help="MQTT broker: where redriven dead letters go")] = None,
    hash_password: Annotated[
        bool, typer.Option("--hash-password", help="read a password, print its hash for the users file, exit")
    ] = False,
    log_level: Annotated[str, typer.Option(help="log level")] = "INFO",
) -> None:
    """The operator console in the browser: overview, incidents (acknowledge), devices, dead letters
    (redrive), rules. Log in with THERMOFLOW_CONSOLE_TOKEN or a users file to write."""
    from thermoflow.console.auth import hash_password as hash_of

    if hash_password:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
        typer.echo(hash_of(password))
        return
    from aiohttp import web

    from thermoflow import db
    from thermoflow.console.app import create_app
    from thermoflow.console.settings import ConsoleSettings

    settings = load_settings(
        ConsoleSettings, console_host=host, console_port=port, console_users_file=users_file,
        console_read_open=read_open, console_rules_file=rules_file, database_url=database_url,
        kafka_bootstrap=kafka_bootstrap, mqtt_url=mqtt_url,
    )  # fmt: skip
    configure_logging(level=log_level, component="console")
    with reach.needs(reach.database(settings)):
        db.migrate(settings)
    app = create_app(settings)
    url = f"http://{settings.console_host}:{settings.console_port}/"
    log.info("console_listening", url=url, read_open=settings.read_open)
    typer.echo(f"thermoflow console on {url} (reading {'open' if settings.read_open else 'needs a login'})")
    if settings.console_users_file is None and not settings.console_token:
        typer.echo(
            "no operator can log in: set THERMOFLOW_CONSOLE_TOKEN or --users-file to acknowledge and redrive",
            err=True,
        )
    web.run_app(app, host=settings.console_host, port=settings.console_port, print=None)


def register(app: typer.Typer) -> None:
    app.command("console")(console_command)
