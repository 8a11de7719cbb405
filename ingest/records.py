"""What the bridge sends to Kafka for one MQTT message: reading records or one dead letter (pure).

:meth:`Translator.translate` never raises: a message that yields no valid reading, for whatever
reason (a bad payload, or a bug in a codec), becomes one dead letter with the reason, and a dead
letter always fits in a Kafka record.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from thermoflow import topics, tracing
from thermoflow.events import DeadLetter, KafkaHeaders, dead_letter_body, dead_letter_headers, encode
from thermoflow.ingest.codecs import (
    DEFAULT_LIMITS,
    DEFAULT_METRIC,
    PayloadError,
    PayloadLimits,
    check_id,
    decode_payload,
    encode_wire,
    plain_wire,
)
from thermoflow.ingest.mapping import TopicFields, TopicTemplate
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics

log = get_logger(__name__)


class OutRecord(NamedTuple):
    """One Kafka record to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: KafkaHeaders


class _Topic(NamedTuple):
    """What one MQTT topic gives each of its records (cached per topic)."""

    fields: TopicFields | None
    headers: KafkaHeaders
    key: bytes | None  # the topic's device id, the Kafka key of its readings
    #: (device id, metric) when the topic names a valid device id and its metric is valid (or
    #: absent): its plain payloads take :meth:`Translator.plain`.
    ids: tuple[str, str] | None


class Translation(NamedTuple):
    records: list[OutRecord]
    error: str | None  # the dead letter's reason, when the message became one


_JSON_HEADER: Final = (topics.HEADER_CONTENT_TYPE, topics.CONTENT_TYPE_JSON)
_new_tuple: Final = tuple.__new__
_CACHE_TOPICS: Final = 200_000  # topics whose fields and headers are kept (about one per device)
#: Longer MQTT topics (up to 65,535 bytes on the wire) are refused: none names a valid device id
#: and metric, and each would be copied into every record's header and the topic cache.
MAX_TOPIC_LENGTH: Final = 1_024
#: The default cut of a dead letter's bytes: well under Kafka's 1 MiB record and request limits.
DEADLETTER_MAX_BYTES: Final = 256 * 1024


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
        limits: PayloadLimits = DEFAULT_LIMITS,
        deadletter_max_bytes: int = DEADLETTER_MAX_BYTES,
    ) -> None:
        self.template = template
        self.readings_topic = readings_topic
        self.deadletter_topic = deadletter_topic
        self.limits = limits
        self.deadletter_max_bytes = deadletter_max_bytes
        # A device publishes to the same topic: its fields, headers and Kafka key, once per topic.
        self._topics: dict[str, _Topic] = {}

    def _topic(self, mqtt_topic: str) -> _Topic:
        known = self._topics.get(mqtt_topic)
        if known is None:
            if len(mqtt_topic) > MAX_TOPIC_LENGTH:
                raise PayloadError(
                    f"MQTT topic of {len(mqtt_topic)} characters is longer than {MAX_TOPIC_LENGTH}"
                )
            if len(self._topics) >= _CACHE_TOPICS:
                self._topics.clear()
            headers = [(topics.HEADER_MQTT_TOPIC, mqtt_topic.encode("utf-8", "replace")), _JSON_HEADER]
            fields = self.template.match(mqtt_topic)
            key = fields.device_id.encode() if fields is not None and fields.device_id else None
            known = self._topics[mqtt_topic] = _Topic(fields, headers, key, _valid_ids(fields))
        return known

    def translate(
        self, mqtt_topic: str, payload: bytes, *, received_at: float, traceparent: bytes | None = None
    ) -> Translation:
        """The message's reading records, or its one dead letter (never an exception).

        Its records (all of them: one message, one trace) carry ``traceparent`` when given. It
        runs inside the bridge's read of the socket, where an exception would hold the message,
        and every ack after it, forever: even a bug of its own becomes the message's dead letter.
        """
        record = self.plain(mqtt_topic, payload, received_at=received_at, traceparent=traceparent)
        if record is not None:
            return Translation([record], None)
        return self.general(mqtt_topic, payload, received_at=received_at, traceparent=traceparent)

    def plain(
        self, mqtt_topic: str, payload: bytes, *, received_at: float, traceparent: bytes | None = None
    ) -> OutRecord | None:
        """The one reading record of a plain payload on a known topic (nearly every message), or
        None: then :meth:`general` decides. Never raises.

        :meth:`translate` is this, then :meth:`general`; the bridge calls the two itself, so that
        nearly every message costs no :class:`Translation`.
        """
        try:
            known = self._topics.get(mqtt_topic)
            if known is None or known.ids is None or payload[:1] != b"{":
                return None
            device_id, metric = known.ids
            wire = plain_wire(
                payload, device_id=device_id, metric=metric, received_at=received_at, limits=self.limits
            )
            if wire is None:
                return None
            value = encode_wire(wire)
            headers = known.headers
            if traceparent is not None:
                headers = [*headers, (tracing.HEADER, traceparent)]
            # One reading, the topic's key; tuple.__new__ skips the NamedTuple's Python-level __new__.
            return _new_tuple(OutRecord, (self.readings_topic, known.key, value, headers))
        except Exception:  # noqa: BLE001 - general() decides, and says what went wrong
            return None

    def general(
        self, mqtt_topic: str, payload: bytes, *, received_at: float, traceparent: bytes | None = None
    ) -> Translation:
        """:meth:`translate` for a message :meth:`plain` did not take: its readings, or its dead
        letter with the reason (never an exception)."""
        try:
            known = self._topics.get(mqtt_topic)  # as plain() found it: did it decode the payload?
            plain = known is None or known.ids is None or payload[:1] != b"{"
            return self._translate(
                mqtt_topic, payload, received_at=received_at, traceparent=traceparent, plain=plain
            )
        except Exception as exc:
            log.exception(
                "translate_failed", topic=mqtt_topic[:200], trace_id=tracing.trace_id_of(traceparent)
            )
            reason = f"internal error translating message: {type(exc).__name__}"
            return self.dead_letter(
                mqtt_topic, payload, reason, received_at=received_at, traceparent=traceparent
            )

    def _translate(
        self, mqtt_topic: str, payload: bytes, *, received_at: float, traceparent: bytes | None, plain: bool
    ) -> Translation:
        """The general path; ``plain``: whether :func:`decode_payload` is to try the plain fast path
        (False when :meth:`plain` did for this payload, and declined it)."""
        fields: TopicFields | None = None
        try:
            fields, headers, key, _ = self._topic(mqtt_topic)
            if traceparent is not None:  # one list per message, shared by its readings
                headers = [*headers, (tracing.HEADER, traceparent)]
            readings = decode_payload(
                payload, fields=fields, received_at=received_at, limits=self.limits, plain=plain
            )
            if not readings:  # every message must end somewhere: its ack waits for its records
                raise PayloadError("payload holds no reading")
            readings_topic = self.readings_topic
            if len(readings) == 1:  # nearly every message: the topic's device, its key known
                reading = readings[0]
                if key is None or fields is None or reading.device_id != fields.device_id:
                    key = reading.device_id.encode()
                return Translation([OutRecord(readings_topic, key, encode(reading), headers)], None)
            return Translation(
                [OutRecord(readings_topic, r.device_id.encode(), encode(r), headers) for r in readings], None
            )
        except PayloadError as exc:
            reason = str(exc)
            if fields is None and not reason.startswith("MQTT topic"):
                reason += f" (topic {mqtt_topic!r} does not match the template {self.template.template!r})"
        except Exception as exc:  # noqa: BLE001 - a codec's bug must cost one message, not the fleet's acks
            reason = f"internal error decoding payload: {type(exc).__name__}: {exc}"
        return self.dead_letter(mqtt_topic, payload, reason, received_at=received_at, traceparent=traceparent)

    def dead_letter(
        self,
        mqtt_topic: str,
        payload: bytes,
        reason: str,
        *,
        received_at: float,
        traceparent: bytes | None = None,
    ) -> Translation:
        """The message as one dead letter: its bytes (cut to ``deadletter_max_bytes``) and the reason."""
        letter = DeadLetter(error=reason, stage="ingest", source=mqtt_topic, failed_at=received_at)
        body, extra = dead_letter_body(payload, max_bytes=self.deadletter_max_bytes)
        headers = dead_letter_headers(letter) + extra
        if traceparent is not None:
            headers.append((tracing.HEADER, traceparent))
        return Translation([OutRecord(self.deadletter_topic, None, body, headers)], reason)


def _valid_ids(fields: TopicFields | None) -> tuple[str, str] | None:
    """The topic's (device id, metric) for :meth:`Translator.plain`, when both are valid ids."""
    if fields is None or not fields.device_id:
        return None
    metric = fields.metric or DEFAULT_METRIC
    try:
        check_id(fields.device_id, "device id")
        check_id(metric, "metric")
    except PayloadError:
        return None  # the general path says which is wrong, for each message
    return fields.device_id, metric


def dead_letter_reason(error: str) -> str:
    """A dead letter's reason as a metric label: a few fixed values, never the error's own text.

    >>> dead_letter_reason("payload is neither JSON nor a number: JSON is malformed")
    'payload'
    >>> dead_letter_reason("internal error decoding payload: KeyError: 'x'")
    'internal'
    """
    if error.startswith("internal error"):
        return "internal"
    if error.startswith("MQTT topic") or "does not match the template" in error:
        return "topic"
    return "payload"


class LogSampler:
    """Admits at most ``per_second`` log lines a second, and says how many it held back.

    A flood of bad payloads must not turn into a flood of log lines (each costs more CPU than
    the message did).

    >>> sampler = LogSampler(per_second=2)
    >>> [sampler.admit(now=10.0) for _ in range(4)], sampler.admit(now=11.5)
    ([0, 0, None, None], 2)
    """

    def __init__(self, *, per_second: int = 10) -> None:
        self.per_second = per_second
        self._window = float("-inf")
        self._admitted = 0
        self._held = 0

    def admit(self, *, now: float) -> int | None:
        """None: skip this line; else log it, with the count of lines held back before it."""
        if now - self._window >= 1.0:
            self._window, self._admitted = now, 0
        if self._admitted >= self.per_second:
            self._held += 1
            return None
        self._admitted += 1
        held, self._held = self._held, 0
        return held


class DeadLetterNotes:
    """Each dead letter counted by reason (``dead_lettered``), and logged: a sample of them
    (:class:`LogSampler`), so a flood of bad payloads is not a flood of log lines."""

    def __init__(self, metrics: Metrics, *, per_second: int = 10) -> None:
        self.metrics = metrics
        self._sampler = LogSampler(per_second=per_second)

    def note(self, topic: str, error: str | None, *, traceparent: bytes | None, now: float) -> None:
        """The message became a dead letter for ``error``, if not None (``now``: monotonic seconds)."""
        if error is None:
            return
        self.metrics.count("dead_lettered", reason=dead_letter_reason(error))
        held = self._sampler.admit(now=now)
        if held is not None:
            log.warning("dead_letter", topic=topic[:200], error=error[:500], not_logged=held,
                        trace_id=tracing.trace_id_of(traceparent))  # fmt: skip
