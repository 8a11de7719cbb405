"""The `thermoflow` sub-commands of the processors component."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from thermoflow.logs import configure_logging
from thermoflow.settings import ConfigError, load_settings


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `thermoflow` app."""
    app.command("process")(process)


def process(
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            "--rules-file",
            help="threshold rules file [THERMOFLOW_RULES_FILE; default: the shipped processors/rules.yaml]",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="worker processes sharing the partitions [1]")
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group", "--processor-group", help="consumer group / faust app id [THERMOFLOW_PROCESSOR_GROUP]"
        ),
    ] = None,
    functions: Annotated[
        str | None,
        typer.Option("--functions", help="comma-separated modules that register more functions"),
    ] = None,
    worker_index: Annotated[int | None, typer.Option("--worker-index", hidden=True)] = None,
) -> None:
    """The processor worker: readings -> threshold rules (numpy, in batches) -> alert events."""
    from thermoflow.processors.settings import ProcessorSettings
    from thermoflow.processors.worker import child_env, prepare, run_worker, run_workers
    from thermoflow.rules import RulesError, load_rules

    settings = load_settings(
        ProcessorSettings,
        rules_file=rules,
        workers=workers,
        processor_group=group,
        functions=functions,
    )
    configure_logging(level=settings.log_level, component="processors")
    try:
        load_rules(settings.rules_path)  # fail fast on a bad file: exit 2 with the rule and field named
    except RulesError as exc:
        raise ConfigError(f"rules_file (--rules or THERMOFLOW_RULES_FILE): {exc}") from None
    if worker_index is not None:
        raise typer.Exit(run_worker(settings, worker_index=worker_index, parent_pid=os.getppid()))
    try:
        prepare(settings)
    except ImportError as exc:
        raise ConfigError(f"functions (--functions or THERMOFLOW_FUNCTIONS): {exc}") from None
    if settings.workers == 1:
        raise typer.Exit(run_worker(settings, worker_index=0))
    env = child_env(
        # absolute(), not resolve(): a mounted ConfigMap's file is a symlink whose target
        # folder is replaced on each update; the workers must keep following the link.
        rules_file=str(settings.rules_path.absolute()),
        processor_group=settings.processor_group,
        functions=settings.functions,
        workers=str(settings.workers),
    )
    raise typer.Exit(run_workers(settings, env=env))
