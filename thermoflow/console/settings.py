"""Settings of `thermoflow console`: where it listens, who may write, what it watches."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, SecretStr

from thermoflow.alerts.settings import NOTIFIER_STATE_TOPIC
from thermoflow.settings import ThermoflowSettings

#: The consumer groups whose lag the overview shows, by default the pipeline's own.
DEFAULT_GROUPS = "thermoflow-processors,thermoflow-sink,thermoflow-alerts-store,thermoflow-alerts-notify"


class ConsoleSettings(ThermoflowSettings):
    """The operator console: the shared connection settings plus its own."""

    console_host: str = Field("127.0.0.1", min_length=1, description="address the console listens on")
    console_port: int = Field(8080, ge=0, le=65535, description="port of the console (0: any free one)")
    console_users_file: Path | None = Field(
        None,
        description="operators who may acknowledge and redrive: lines `name:argon2-hash`"
        " (`thermoflow console --hash-password` prints a hash)",
    )
    console_token: SecretStr | None = Field(
        None,
        description="a single shared password that logs in any operator name (the demo's login)",
    )
    console_read_open: bool | None = Field(
        None,
        description="whether pages may be read without a login [open when listening on loopback only,"
        " closed otherwise]",
    )
    console_session_hours: float = Field(12.0, gt=0, le=24 * 30, description="hours a login lasts")
    console_groups: str = Field(
        DEFAULT_GROUPS,
        pattern=r"^[A-Za-z0-9._,-]+$",
        description="consumer groups whose lag the overview shows, comma-separated",
    )
    sink_group: str = Field(
        "thermoflow-sink",
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="the sink's consumer group: its commits count the readings stored",
    )
    notifier_state_topic: str = Field(
        NOTIFIER_STATE_TOPIC,
        min_length=1,
        description="the notifier's compacted state topic: how many notifications each incident got",
    )
    console_deadletters: int = Field(
        1000, ge=10, le=100_000, description="most recent dead letters the console keeps and shows"
    )
    console_rules_file: Path | None = Field(
        None, description="the processors' rules file, shown on the rules page [the shipped example]"
    )

    @property
    def groups(self) -> list[str]:
        return [group for group in self.console_groups.split(",") if group]

    @property
    def read_open(self) -> bool:
        """Reading without a login: as set, else only when no other machine can connect."""
        if self.console_read_open is not None:
            return self.console_read_open
        return is_loopback(self.console_host)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
