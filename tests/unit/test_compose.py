"""docker-compose.yml, tested without a Docker engine: it parses, it starts real `thermoflow`
commands with options that exist, and every THERMOFLOW_* variable it sets is a real setting."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from pydantic_settings import BaseSettings

from thermoflow.cli import app, register_components
from thermoflow.configref import COMPONENT_SETTINGS
from thermoflow.settings import ThermoflowSettings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def thermoflow_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"].items()
    return {name: svc for name, svc in services if svc.get("image") == "thermoflow:latest"}


def all_settings_classes() -> list[type[BaseSettings]]:
    for _title, module in COMPONENT_SETTINGS:
        importlib.import_module(module)
    found: list[type[BaseSettings]] = []
    pending: list[type[BaseSettings]] = [ThermoflowSettings]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def known_variables() -> set[str]:
    names = set()
    for cls in all_settings_classes():
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        for name, field in cls.model_fields.items():
            names.add(f"{prefix}{name.upper()}")
            if isinstance(field.validation_alias, str):
                names.add(field.validation_alias.upper())
    return names


def test_compose_parses_and_orders_startup() -> None:
    services = compose()["services"]
    assert {"mosquitto", "kafka", "timescaledb", "grafana", "simulator"} <= set(services)
    for name in ("mosquitto", "kafka", "timescaledb"):
        assert "healthcheck" in services[name], f"{name} needs a healthcheck for depends_on"
    for name, service in thermoflow_services().items():
        if name == "init":
            continue
        assert service["depends_on"]["init"]["condition"] == "service_completed_successfully", name
    assert services["init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_every_pipeline_component_runs_from_the_one_image() -> None:
    commands = {tuple(svc["command"][:2]) for svc in thermoflow_services().values()}
    for expected in [("bridge",), ("process",), ("sink",), ("alerts", "store"), ("alerts", "notify")]:
        assert any(command[: len(expected)] == expected for command in commands), expected


@pytest.mark.parametrize("service", sorted(thermoflow_services()))
def test_service_command_is_a_real_thermoflow_command(service: str) -> None:
    register_components()
    command: Any = typer.main.get_command(app)  # typer's own vendored click types
    args = [str(arg) for arg in thermoflow_services()[service]["command"]]
    path, rest = ["thermoflow"], list(args)
    while hasattr(command, "get_command"):  # a group
        assert rest, f"{service}: `{' '.join(path)}` is a group, not a command"
        name = rest.pop(0)
        sub = command.get_command(command.context_class(command), name)
        assert sub is not None, f"{service}: `{' '.join(path)}` has no command {name!r}"
        command, path = sub, [*path, name]
    # Parse the leaf's options for real: an unknown option or a bad value raises here.
    ctx = command.make_context(" ".join(path), rest)
    assert not ctx.args, f"{service}: unexpected arguments {ctx.args}"


@pytest.mark.parametrize("service", sorted(thermoflow_services()))
def test_every_environment_variable_is_a_real_setting(service: str) -> None:
    environment = thermoflow_services()[service].get("environment", {})
    unknown = sorted(name for name in environment if name not in known_variables())
    assert not unknown, f"{service} sets variables no settings class reads: {unknown}"


def test_configuration_reference_is_current() -> None:
    from thermoflow.configref import render

    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render(), "regenerate: python -m thermoflow.configref > docs/configuration.md"
