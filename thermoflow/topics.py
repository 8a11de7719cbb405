"""Kafka topic names and the header names the pipeline puts on its records (DESIGN.md)."""

from typing import Final

READINGS: Final = "telemetry.readings"
ALERTS: Final = "telemetry.alerts"
DEADLETTER: Final = "telemetry.deadletter"

# Headers on telemetry.readings records.
HEADER_MQTT_TOPIC: Final = "mqtt-topic"
HEADER_CONTENT_TYPE: Final = "content-type"
CONTENT_TYPE_JSON: Final = b"application/json"

# Headers on telemetry.deadletter records.
HEADER_ERROR: Final = "error"
HEADER_STAGE: Final = "stage"
HEADER_SOURCE: Final = "source"
HEADER_FAILED_AT: Final = "failed_at"
# ... and on a dead letter whose bytes were cut to fit in a Kafka record.
HEADER_TRUNCATED: Final = "truncated"
HEADER_ORIGINAL_SIZE: Final = "original-size"
HEADER_ORIGINAL_SHA256: Final = "original-sha256"
