"""The stack as a whole: one state directory, three services, the pipeline's topics."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pydantic import SecretStr

from thermoflow import topics
from thermoflow.kafka import ensure_topics
from thermoflow.settings import ThermoflowSettings
from thermoflow.stack.services import Kafka, Mosquitto, Postgres, Service, remove_home, service_home


def default_cache_dir() -> Path:
    """Where resolved Kafka jars are kept between runs: ``$XDG_CACHE_HOME/thermoflow``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "thermoflow"


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its state and which ports it listens on."""

    state_dir: Path = Path(".thermoflow/stack")
    host: str = "127.0.0.1"
    mqtt_port: int = 1883
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    postgres_port: int = 5432
    readings_partitions: int = 12
    alerts_partitions: int = 6
    deadletter_partitions: int = 3
    cache_dir: Path = field(default_factory=default_cache_dir)
    #: PostgreSQL with TimescaleDB preloaded: True, False, or None for "when it is installed".
    timescaledb: bool | None = None

    def __post_init__(self) -> None:
        ports = [self.mqtt_port, self.kafka_port, self.kafka_controller_port, self.postgres_port]
        if len(set(ports)) != len(ports):
            raise ValueError(f"the stack's ports must differ, got {ports}")
        for name in ("readings_partitions", "alerts_partitions", "deadletter_partitions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @classmethod
    def saved(cls, state_dir: Path) -> StackConfig | None:
        """The config the stack in ``state_dir`` was last brought up with."""
        try:
            raw = json.loads((state_dir / "stack.json").read_text())
        except (OSError, ValueError):
            return None
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        for key in ("state_dir", "cache_dir"):
            values[key] = Path(values[key])
        return cls(**values)

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "stack.json").write_text(json.dumps(asdict(self), default=str, indent=2) + "\n")


class Stack:
    """Mosquitto, Kafka and PostgreSQL under one state directory."""

    def __init__(self, config: StackConfig) -> None:
        self.config = StackConfig(**{**asdict(config), "state_dir": config.state_dir.resolve()})
        home = self.config.state_dir
        self.mosquitto = Mosquitto(
            home=service_home(home / "mosquitto"), host=config.host, port=config.mqtt_port
        )
        self.kafka = Kafka(
            home=home / "kafka",
            host=config.host,
            port=config.kafka_port,
            controller_port=config.kafka_controller_port,
            cache_dir=config.cache_dir,
        )
        self.postgres = Postgres(
            home=service_home(home / "postgres"),
            host=config.host,
            port=config.postgres_port,
            timescaledb=config.timescaledb,
        )

    @property
    def services(self) -> tuple[Service, ...]:
        return (self.mosquitto, self.kafka, self.postgres)

    @property
    def topic_partitions(self) -> dict[str, int]:
        return {
            topics.READINGS: self.config.readings_partitions,
            topics.ALERTS: self.config.alerts_partitions,
            topics.DEADLETTER: self.config.deadletter_partitions,
        }

    def settings(self) -> ThermoflowSettings:
        """Connection settings that point at this stack."""
        return ThermoflowSettings(
            mqtt_url=self.mosquitto.address,
            kafka_bootstrap=self.kafka.address,
            database_url=SecretStr(self.postgres.address),
        )

    def up(self) -> None:
        """Start what is not running, wait until each answers, create the topics. Idempotent."""
        self.config.save()
        for service in self.services:
            service.up()
        asyncio.run(ensure_topics(self.settings(), self.topic_partitions))

    def down(self) -> None:
        """Stop every service this stack started; errors are collected, not short-circuited."""
        errors = []
        for service in reversed(self.services):
            try:
                service.down()
            except Exception as exc:  # noqa: BLE001 - stop the others all the same
                errors.append(f"{service.name}: {exc}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def purge(self) -> list[Path]:
        """Stop the services, then delete all their data: the state directory, and the folders
        under ``/var/lib/thermoflow`` used when the services' users cannot enter it. Returns
        what was removed. The Kafka jars' cache (shared by every stack) stays.
        """
        self.down()
        removed = [*remove_home(self.mosquitto.home), *remove_home(self.postgres.home)]
        if self.config.state_dir.exists():
            shutil.rmtree(self.config.state_dir)
            removed.append(self.config.state_dir)
        return removed

    def database_kind(self) -> str:
        """What the running PostgreSQL stores readings in, for ``stack up`` and ``stack status``."""
        if not self.postgres.running():
            return "stopped"
        if self.postgres.timescaledb_loaded():
            return "TimescaleDB preloaded: hypertables, compression, retention"
        if self.postgres.timescaledb_installed():
            return (
                "plain PostgreSQL (TimescaleDB installed, not preloaded:"
                " `thermoflow stack down`, then `thermoflow stack up --timescaledb`)"
            )
        return "plain PostgreSQL (TimescaleDB is not installed)"

    def status(self) -> dict[str, str]:
        """``running`` (answers), ``starting`` (process up, not answering) or ``stopped``, per service."""
        result = {}
        for service in self.services:
            if not service.running():
                result[service.name] = "stopped"
            else:
                result[service.name] = "running" if service.ready() else "not answering"
        return result
