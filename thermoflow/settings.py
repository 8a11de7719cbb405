"""Shared connection settings: flags, then ``THERMOFLOW_*`` environment variables, then defaults.

The defaults point at the local stack (``thermoflow stack up``). Each component's own
``settings.py`` subclasses :class:`ThermoflowSettings`, so every process reads the same
connection settings the same way. Secrets are ``SecretStr``: they print as ``**********``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from thermoflow import topics

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_DATABASE_URL = "postgresql://thermoflow@127.0.0.1:5432/thermoflow"

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class ConfigError(ValueError):
    """Settings that cannot work; the message names each bad setting and why."""


class ThermoflowSettings(BaseSettings):
    """How to reach MQTT, Kafka and PostgreSQL."""

    model_config = SettingsConfigDict(env_prefix="THERMOFLOW_", frozen=True, extra="ignore")

    mqtt_url: str = Field(
        DEFAULT_MQTT_URL, description="MQTT broker, mqtt://host:port or mqtts://host:port (TLS)"
    )
    mqtt_username: str | None = Field(None, description="MQTT username")
    mqtt_password: SecretStr | None = Field(None, description="MQTT password")
    mqtt_tls_ca: Path | None = Field(None, description="CA bundle that signs the broker's cert")
    mqtt_tls_cert: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    mqtt_tls_key: Path | None = Field(None, description="client key (PEM) for mutual TLS")

    kafka_bootstrap: str = Field(
        DEFAULT_KAFKA_BOOTSTRAP, description="Kafka bootstrap servers, host:port[,host:port]"
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field("PLAINTEXT", description="Kafka security protocol")
    kafka_sasl_mechanism: KafkaSaslMechanism | None = Field(None, description="Kafka SASL mechanism")
    kafka_sasl_username: str | None = Field(None, description="Kafka SASL username")
    kafka_sasl_password: SecretStr | None = Field(None, description="Kafka SASL password")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for Kafka TLS")
    kafka_fetch_min_bytes: int = Field(
        256 << 10, ge=1, description="bytes a consumer's fetch waits for (up to kafka_fetch_wait)"
    )
    kafka_fetch_wait: float | None = Field(
        None,
        ge=0,
        le=10,
        description="seconds a consumer's fetch may wait for kafka_fetch_min_bytes: fewer, larger batches"
        " [latency_budget]",
    )
    latency_budget: float = Field(
        0.1,
        gt=0,
        le=10,
        description="seconds a reading may wait in each hop (the bridge's linger, a consumer's fetch, the"
        " processor's batch) so that batches grow with the load: a longer budget spends less CPU per"
        " reading at a low rate and when idle, a shorter one keeps the latency lower",
    )

    instance: int | None = Field(
        None,
        ge=0,
        le=10_000,
        description="this process's number among its component's instances, set by `thermoflow run`"
        " (THERMOFLOW_INSTANCE); with it, Kafka consumers use static group membership",
    )
    instance_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,200}$",
        description="static group member id (KIP-345) of this process's Kafka consumers, unique per"
        " process in a group: a restart with the same id gets its partitions back at once",
    )

    stall_timeout: float = Field(
        120.0,
        ge=0,
        description="seconds a component may hold waiting input without progress before it exits"
        " (code 3) to be restarted; 0 disables",
    )

    trace_sample_ratio: float = Field(
        0.001,
        ge=0,
        le=1,
        description="share of MQTT messages whose trace the bridge marks sampled: their readings,"
        " alerts and notifications get OpenTelemetry spans, exported over OTLP/HTTP when"
        " OTEL_EXPORTER_OTLP_ENDPOINT is set. Every record carries a traceparent either way",
    )

    http_port: int | None = Field(
        9108,
        ge=0,
        le=65535,
        description="port of /metrics, /healthz and /readyz; 0 serves none. `thermoflow run`"
        " gives each instance its own: this plus its place in the plan (a processor worker: plus its index)",
    )

    shutdown_grace: float = Field(
        20.0,
        gt=0,
        description="seconds a component gets to stop after SIGTERM/SIGINT/SIGHUP before it exits hard"
        " (code 4), leaving what it had not acked or committed for redelivery",
    )

    readings_topic: str = Field(topics.READINGS, min_length=1, description="Kafka topic of readings")
    alerts_topic: str = Field(topics.ALERTS, min_length=1, description="Kafka topic of alert events")
    deadletter_topic: str = Field(topics.DEADLETTER, min_length=1, description="Kafka dead-letter topic")

    database_url: SecretStr = Field(
        SecretStr(DEFAULT_DATABASE_URL),
        description="PostgreSQL URL, postgresql://user:password@host:port/db",
    )
    database_schema: str = Field(
        "public",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="schema for thermoflow's tables",
    )
    alert_events_chunk_days: int = Field(
        30,
        ge=1,
        le=366,
        description="days of alert events per TimescaleDB chunk: sparse events compress well only in"
        " large chunks (1-day chunks came out bigger); applies to chunks made after `init`",
    )
    readings_retention_days: int = Field(
        90,
        ge=8,
        le=36_500,
        description="days raw readings are kept on TimescaleDB (more than the hourly rollup's 7-day"
        " refresh window); applied by `thermoflow init`",
    )
    alert_events_retention_days: int = Field(
        365,
        ge=8,
        le=36_500,
        description="days raw alert events are kept on TimescaleDB (their hourly counts stay as long as"
        " the hourly rollups); applied by `thermoflow init`",
    )
    rollup_1m_retention_days: int = Field(
        365,
        ge=8,
        le=36_500,
        description="days the 1-minute rollup (readings_1m) is kept on TimescaleDB, at least the raw"
        " readings' days; applied by `thermoflow init`",
    )
    rollup_1h_retention_days: int = Field(
        1825,
        ge=8,
        le=36_500,
        description="days the hourly and the fleet-wide rollups (readings_1h, alert_counts_1h,"
        " fleet_readings_1m, fleet_alerts_1m) are kept on TimescaleDB, at least the 1-minute rollup's"
        " days; applied by `thermoflow init`",
    )

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url_is_mqtt(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"scheme must be mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}: {exc}") from None
        return url

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_is_host_port(cls, bootstrap: str) -> str:
        for server in bootstrap.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"each server must be host:port, got {server!r}")
        return bootstrap

    @field_validator("database_url")
    @classmethod
    def _database_url_is_postgres(cls, url: SecretStr) -> SecretStr:
        scheme = urlsplit(url.get_secret_value()).scheme
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(f"scheme must be postgresql://, got {scheme!r}://")
        return url

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> Self:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "kafka_security_protocol SASL_* needs kafka_sasl_mechanism, "
                "kafka_sasl_username and kafka_sasl_password"
            )
        return self

    @model_validator(mode="after")
    def _rollups_outlive_raw(self) -> Self:
        if not self.readings_retention_days <= self.rollup_1m_retention_days <= self.rollup_1h_retention_days:
            raise ValueError(
                "retention must grow with the rollup: readings_retention_days <= rollup_1m_retention_days"
                f" <= rollup_1h_retention_days, got {self.readings_retention_days},"
                f" {self.rollup_1m_retention_days}, {self.rollup_1h_retention_days}"
            )
        return self

    # -- derived views -------------------------------------------------------------------------

    @property
    def mqtt_host(self) -> str:
        return urlsplit(self.mqtt_url).hostname or "127.0.0.1"

    @property
    def mqtt_tls(self) -> bool:
        return urlsplit(self.mqtt_url).scheme in ("mqtts", "ssl") or self.mqtt_tls_ca is not None

    @property
    def mqtt_port(self) -> int:
        return urlsplit(self.mqtt_url).port or (8883 if self.mqtt_tls else 1883)

    @property
    def mqtt_credentials(self) -> tuple[str, str | None] | None:
        """Username and password from the settings, else from the URL's userinfo."""
        parts = urlsplit(self.mqtt_url)
        if self.mqtt_username:
            password = self.mqtt_password.get_secret_value() if self.mqtt_password else None
            return (self.mqtt_username, password)
        if parts.username:
            return (parts.username, parts.password)
        return None

    def mqtt_ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context for the broker, or None for plain TCP."""
        if not self.mqtt_tls:
            return None
        context = ssl.create_default_context(cafile=self.mqtt_tls_ca)
        if self.mqtt_tls_cert:
            context.load_cert_chain(self.mqtt_tls_cert, self.mqtt_tls_key)
        return context

    @property
    def fetch_wait(self) -> float:
        """How long a consumer's fetch waits for more records: kafka_fetch_wait, or the latency
        budget. Under load the fetch fills kafka_fetch_min_bytes first and returns at once; at a
        low rate it waits, so batches stay large. A batch costs the sink about 2 ms whatever its
        size: with the whole budget rather than ¾ of it, the sink spent 8.3-8.4 µs per reading at
        a steady 5,000/s instead of 9.7-9.8, and p99 publish -> stored went from 131 to 155 ms
        (3 runs each, alternating)."""
        return self.kafka_fetch_wait if self.kafka_fetch_wait is not None else self.latency_budget

    def kafka_options(self) -> dict[str, Any]:
        """Keyword arguments shared by aiokafka's producer, consumer and admin client."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = ssl.create_default_context(cafile=self.kafka_ssl_cafile)
        if self.kafka_security_protocol.startswith("SASL"):
            assert self.kafka_sasl_password is not None  # checked by _sasl_is_complete
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        return options

    @property
    def database_dsn(self) -> str:
        """The database URL with its password: pass it to psycopg, never to a log."""
        return self.database_url.get_secret_value()

    @property
    def database_url_redacted(self) -> str:
        """The database URL with any password masked, fit for logs and status lines."""
        return redact_url(self.database_dsn)


def redact_url(url: str) -> str:
    """Mask the password in a URL.

    >>> redact_url("postgresql://app:s3cret@db:5432/thermoflow")
    'postgresql://app:***@db:5432/thermoflow'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(cls: type[SettingsT], **flags: Any) -> SettingsT:
    """Build settings with flags first (None means "not given"), then environment, then defaults.

    Raises:
        ConfigError: naming every bad setting, with the environment variable it may come from.
    """
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            where = f" (--{field.replace('_', '-')} or {prefix}{field.upper()})" if error["loc"] else ""
            problems.append(f"{field}{where}: {error['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
