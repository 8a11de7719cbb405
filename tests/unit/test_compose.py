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


#: The commands that run a long-running component serving /metrics, /healthz and /readyz.
SERVING = {("bridge",), ("process",), ("sink",), ("alerts", "store"), ("alerts", "notify"), ("simulate",)}


def http_port_of(service: dict[str, Any]) -> int:
    """The port the service's component serves /metrics on: its THERMOFLOW_HTTP_PORT, else the default."""
    given = service.get("environment", {}).get("THERMOFLOW_HTTP_PORT")
    return int(given) if given is not None else int(ThermoflowSettings.model_fields["http_port"].default)


def prometheus_targets() -> set[tuple[str, int]]:
    """(host, port) of everything deploy/prometheus/prometheus.yml scrapes, by name or statically."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for sd in job.get("dns_sd_configs", []):
            targets |= {(name, int(sd["port"])) for name in sd["names"]}
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.add((host, int(port)))
    return targets


def test_prometheus_scrapes_every_component_on_its_http_port() -> None:
    serving = {
        (name, http_port_of(service))
        for name, service in thermoflow_services().items()
        if any(tuple(service["command"][: len(command)]) == command for command in SERVING)
    }
    assert len(serving) == len(SERVING)
    assert prometheus_targets() == serving


def test_prometheus_and_grafana_run_in_compose_with_the_shipped_config() -> None:
    services = compose()["services"]
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert "prometheus" in services["grafana"]["depends_on"]


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``PLAINTEXT://kafka:9092,EXTERNAL://localhost:9094`` → {name: (host, port)}."""
    found = {}
    for listener in value.split(","):
        name, _, address = listener.partition("://")
        host, _, port = address.rpartition(":")
        found[name] = (host, int(port))
    return found


def test_kafka_has_a_listener_the_host_can_use() -> None:
    kafka = compose()["services"]["kafka"]
    env = kafka["environment"]
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(bound) <= set(protocols) and set(advertised) <= set(bound)
    # The containers' listener: what every thermoflow service's THERMOFLOW_KAFKA_BOOTSTRAP says.
    inside = {svc["environment"]["THERMOFLOW_KAFKA_BOOTSTRAP"] for svc in thermoflow_services().values()}
    assert inside == {"{}:{}".format(*advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]])} == {"kafka:9092"}
    # The host's: advertised as an address the host resolves, on the port compose publishes.
    host, port = advertised["EXTERNAL"]
    assert host == "${KAFKA_EXTERNAL_HOST:-localhost}" and bound["EXTERNAL"][1] == port
    published = {int(mapping.split(":")[0]): int(mapping.split(":")[1]) for mapping in kafka["ports"]}
    assert published == {port: port}, "publish exactly the EXTERNAL port: 9092 advertises kafka:9092"
