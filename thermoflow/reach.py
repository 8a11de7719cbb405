"""A command that needs a service says which one it could not reach, where, and how to point at it.

Every command that talks to MQTT, Kafka or PostgreSQL once (``init``, ``alerts list``,
``stack check`` ...) wraps that talk in :func:`needs`: a refused connection, a timeout or a
failed login becomes a :class:`~thermoflow.stack.ServiceError` naming the service, its
address (password masked) and the flag and environment variable that set it. The CLI prints
it as one line and exits 2, never a traceback. Long-running components don't use it: they
retry with backoff instead.

    >>> from thermoflow.settings import ThermoflowSettings
    >>> with needs(database(ThermoflowSettings(database_url="postgresql://u:pw@db:5432/x"))):
    ...     raise ConnectionRefusedError(111, "Connection refused")
    Traceback (most recent call last):
    thermoflow.errors.ServiceError: cannot reach PostgreSQL at postgresql://u:***@db:5432/x\
 ([Errno 111] Connection refused); is it running? Point at it with --database-url or THERMOFLOW_DATABASE_URL
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from aiokafka.errors import KafkaConnectionError, KafkaError

from thermoflow.errors import ServiceError
from thermoflow.settings import ThermoflowSettings, redact_url

#: What a service that is down, unreachable or refusing us raises (and nothing else).
UNREACHABLE = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    psycopg.OperationalError,
    KafkaConnectionError,
    KafkaError,
)


@dataclass(frozen=True)
class Service:
    """A service a command needs: its name, its (redacted) address, and how to set it."""

    name: str
    address: str
    setting: str  # the flag and environment variable, as a user types them

    def unreachable(self, exc: BaseException) -> ServiceError:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ServiceError(
            f"cannot reach {self.name} at {self.address} ({reason}); is it running?"
            f" Point at it with {self.setting}"
        )


def database(settings: ThermoflowSettings) -> Service:
    return Service("PostgreSQL", settings.database_url_redacted, "--database-url or THERMOFLOW_DATABASE_URL")


def kafka(settings: ThermoflowSettings) -> Service:
    return Service("Kafka", settings.kafka_bootstrap, "--kafka-bootstrap or THERMOFLOW_KAFKA_BOOTSTRAP")


def mqtt(settings: ThermoflowSettings) -> Service:
    return Service("the MQTT broker", redact_url(settings.mqtt_url), "--mqtt-url or THERMOFLOW_MQTT_URL")


@contextmanager
def needs(service: Service) -> Iterator[None]:
    """Turn a failure to reach ``service`` inside the block into a ServiceError that says so."""
    try:
        yield
    except UNREACHABLE as exc:
        raise service.unreachable(exc) from None
