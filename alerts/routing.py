"""Routing config: which channels exist and which severities each one gets. Pure (parses text).

A YAML file (``THERMOFLOW_NOTIFY_ROUTES`` or ``--routes``)::

    channels:
      ops-log:   {type: log, severities: [warning, critical]}
      pager:     {type: webhook, url: "https://hooks.example/x", secret_env: PAGER_SECRET,
                  severities: [critical]}
      team:      {type: slack, url_env: SLACK_URL, severities: [critical]}
      oncall:    {type: email, host: smtp.example, port: 587, starttls: true,
                  username: alerts, password_env: SMTP_PASSWORD,
                  sender: alerts@example, recipients: [oncall@example], severities: [critical]}

Secrets are named by environment variable (``*_env``), so the file itself holds none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from thermoflow.events import SEVERITIES, Severity
from thermoflow.settings import ConfigError

ALL_SEVERITIES: list[Severity] = list(SEVERITIES)


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    severities: list[Severity] = Field(default_factory=lambda: list(ALL_SEVERITIES))


class LogRoute(_Channel):
    type: Literal["log"]
    path: str | None = None  # None: stdout


class WebhookRoute(_Channel):
    type: Literal["webhook"]
    url: str | None = None
    url_env: str | None = None
    secret: SecretStr | None = None
    secret_env: str | None = None


class SlackRoute(_Channel):
    type: Literal["slack"]
    url: SecretStr | None = None
    url_env: str | None = None


class EmailRoute(_Channel):
    type: Literal["email"]
    host: str
    port: int = 587
    starttls: bool = True
    ssl: bool = False
    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = None
    sender: str
    recipients: list[str] = Field(min_length=1)
    ca_file: str | None = None
    timeout: float = 10.0


ChannelRoute = Annotated[LogRoute | WebhookRoute | SlackRoute | EmailRoute, Field(discriminator="type")]


class Routes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    channels: dict[str, ChannelRoute] = Field(default_factory=dict)

    def for_severity(self, severity: Severity) -> list[str]:
        """The channel names a notification of this severity goes to."""
        return [name for name, route in self.channels.items() if severity in route.severities]


def parse_routes(text: str, *, source: str = "routes") -> Routes:
    """Parse and validate a routing file's text; raise ConfigError naming what is wrong."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    try:
        return Routes.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{source}: invalid routes:\n  " + "\n  ".join(problems)) from None


def env_secret(name: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The value of the environment variable ``name`` (None if unnamed); ConfigError if unset."""
    if name is None:
        return None
    value = (os.environ if env is None else env).get(name)
    if not value:
        raise ConfigError(f"routes name the environment variable {name}, which is not set")
    return value


def with_env_channels(
    routes: Routes,
    *,
    log: bool,
    webhook_url: str | None,
    webhook_secret: str | None,
    slack_url: str | None,
) -> Routes:
    """Add the channels configured by plain settings (``THERMOFLOW_WEBHOOK_URL`` …) to the file's."""
    channels: dict[str, ChannelRoute] = dict(routes.channels)
    if log and not any(isinstance(route, LogRoute) for route in channels.values()):
        channels["log"] = LogRoute(type="log")
    if webhook_url:
        channels["webhook"] = WebhookRoute(
            type="webhook", url=webhook_url, secret=SecretStr(webhook_secret or "")
        )
    if slack_url:
        channels["slack"] = SlackRoute(type="slack", url=SecretStr(slack_url), severities=["critical"])
    return Routes(channels=channels)
