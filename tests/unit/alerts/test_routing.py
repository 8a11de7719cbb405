"""The routing file: parsed, validated, merged with the env-configured channels."""

from __future__ import annotations

from pathlib import Path

import pytest

from thermoflow.alerts.routing import EmailRoute, WebhookRoute, env_secret, parse_routes, with_env_channels
from thermoflow.settings import ConfigError

ROUTES_YAML = """
channels:
  ops-log: {type: log}
  pager: {type: webhook, url: "https://hooks.example/x", secret_env: PAGER_SECRET, severities: [critical]}
  oncall:
    type: email
    host: smtp.example
    sender: alerts@example
    recipients: [oncall@example]
    severities: [critical]
"""


def test_channels_get_the_severities_they_are_routed() -> None:
    routes = parse_routes(ROUTES_YAML)
    assert routes.for_severity("warning") == ["ops-log"]
    assert routes.for_severity("critical") == ["ops-log", "pager", "oncall"]
    assert isinstance(routes.channels["oncall"], EmailRoute) and routes.channels["oncall"].starttls


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("channels: {x: {type: pigeon}}", "x"),
        ("channels: {x: {type: log, severities: [meh]}}", "severities"),
        ("channels: {x: {type: email, host: h, sender: s, recipients: []}}", "recipients"),
        ("channels: [", "not valid YAML"),
    ],
)
def test_a_bad_routing_file_names_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_routes(text, source="routes.yaml")


def test_env_configured_webhook_is_added_for_every_severity() -> None:
    routes = with_env_channels(
        parse_routes(ROUTES_YAML), log=True, webhook_url="http://127.0.0.1:1/hook", webhook_secret="s",
        slack_url=None,
    )  # fmt: skip
    assert isinstance(routes.channels["webhook"], WebhookRoute)
    assert "webhook" in routes.for_severity("warning")
    assert "log" not in routes.channels  # the file already has a log channel


def test_a_named_secret_must_be_set() -> None:
    assert env_secret("PAGER_SECRET", {"PAGER_SECRET": "x"}) == "x"
    with pytest.raises(ConfigError, match="PAGER_SECRET"):
        env_secret("PAGER_SECRET", {})


def test_the_shipped_example_parses() -> None:
    example = Path(__file__).resolve().parents[3] / "alerts" / "routes.example.yaml"
    routes = parse_routes(example.read_text(), source=str(example))
    assert routes.for_severity("critical") == ["audit", "pager", "team", "oncall"]
    assert routes.for_severity("warning") == ["audit", "team"]
