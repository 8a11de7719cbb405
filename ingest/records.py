"""What the bridge sends to Kafka for one MQTT message: reading records or one dead letter (pure)."""

from __future__ import annotations

from typing import Final, NamedTuple

from ingest.codecs import PayloadError, decode_payload
from ingest.mapping import TopicFields, TopicTemplate
from thermoflow import topics
from thermoflow.events import DeadLetter, KafkaHeaders, dead_letter_headers, encode


class OutRecord(NamedTuple):
    """One Kafka record to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: KafkaHeaders


class Translation(NamedTuple):
    records: list[OutRecord]
    error: str | None  # the dead letter's reason, when the message became one


_JSON_HEADER: Final = (topics.HEADER_CONTENT_TYPE, topics.CONTENT_TYPE_JSON)
_CACHE_TOPICS: Final = 200_000  # topics whose fields and headers are kept (about one per device)


class Translator:
    """Turns one MQTT message into its Kafka records: a pure function with its settings bound.

    >>> template = TopicTemplate("sensors/{device_id}/{metric}")
    >>> t = Translator(template, readings_topic="r", deadletter_topic="d")
    >>> [(r.topic, r.key) for r in t.translate("sensors/f-1/temperature", b"4.5", received_at=1.0).records]
    [('r', b'f-1')]
    >>> t.translate("sensors/f-1/temperature", b"hot", received_at=1.0).error
    'payload is neither JSON nor a number: JSON is malformed: invalid character (byte 0)'
    """

    def __init__(
        self,
        template: TopicTemplate,
        *,
        readings_topic: str,
        deadletter_topic: str,
        max_payload_bytes: int = 65_536,
    ) -> None:
        self.template = template
        self.readings_topic = readings_topic
        self.deadletter_topic = deadletter_topic
        self.max_payload_bytes = max_payload_bytes
        self._fields: dict[str, TopicFields | None] = {}  # a device publishes to the same topic
        self._headers: dict[str, KafkaHeaders] = {}

    def _topic(self, mqtt_topic: str) -> tuple[TopicFields | None, KafkaHeaders]:
        if mqtt_topic not in self._fields:
            if len(self._fields) >= _CACHE_TOPICS:
                self._fields.clear()
                self._headers.clear()
            self._fields[mqtt_topic] = self.template.match(mqtt_topic)
            self._headers[mqtt_topic] = [(topics.HEADER_MQTT_TOPIC, mqtt_topic.encode()), _JSON_HEADER]
        return self._fields[mqtt_topic], self._headers[mqtt_topic]

    def translate(self, mqtt_topic: str, payload: bytes, *, received_at: float) -> Translation:
        fields, headers = self._topic(mqtt_topic)
        try:
            readings = decode_payload(
                payload, fields=fields, received_at=received_at, max_bytes=self.max_payload_bytes
            )
        except PayloadError as exc:
            reason = str(exc)
            if fields is None:
                reason += f" (topic {mqtt_topic!r} does not match the template {self.template.template!r})"
            letter = DeadLetter(error=reason, stage="ingest", source=mqtt_topic, failed_at=received_at)
            return Translation(
                [OutRecord(self.deadletter_topic, None, payload, dead_letter_headers(letter))], reason
            )
        return Translation(
            [OutRecord(self.readings_topic, r.device_id.encode(), encode(r), headers) for r in readings], None
        )
