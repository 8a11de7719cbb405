"""The local service stack: real Mosquitto, Kafka (KRaft) and PostgreSQL as child processes."""

from thermoflow.errors import ServiceError
from thermoflow.stack.stack import Stack, StackConfig

__all__ = ["ServiceError", "Stack", "StackConfig"]
