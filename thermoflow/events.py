"""The event contracts of DESIGN.md as msgspec structs, with reusable codecs.

Everything here is pure: no Kafka, no clock. Decoding validates, and a decode error
names the field that was wrong::

    >>> decode_reading(b'{"v": 1, "device_id": "f-1", "value": "hot", "ts": 1.0, "received_at": 1.0}')
    Traceback (most recent call last):
    ...
    thermoflow.events.EventDecodeError: invalid reading: Expected `float`, got `str` - at `$.value`
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from thermoflow import topics

SCHEMA_VERSION: Final = 1

Severity = Literal["warning", "critical"]
#: The conditions other than the thresholds' ``above``/``below``: each is its own incident kind.
KindCondition = Literal[
    "offline",
    "stuck",
    "rate",
    "outlier",
    "ingest_silent",
    "deadletter_rate",
    "consumer_lag",
    "breaker_open",
]
Condition = Literal["above", "below"] | KindCondition
Stage = Literal["ingest", "processors", "alerts"]
#: What an incident is one of, per (device, rule): ``threshold`` for ``above``/``below``, else the condition.
IncidentKind = Literal["threshold"] | KindCondition
#: The device id of alerts about the pipeline itself rather than a device.
PIPELINE_DEVICE: Final = "pipeline"
#: The pipeline's own conditions, raised under :data:`PIPELINE_DEVICE` by the process that watches them.
PIPELINE_CONDITIONS: Final[frozenset[Condition]] = frozenset(
    {"deadletter_rate", "consumer_lag", "breaker_open"}
)
_SILENCES: Final[frozenset[Condition]] = frozenset({"offline", "ingest_silent"})
#: Conditions that end on a :class:`Clear` (data back, or the pipeline's trouble over), not after quiet time.
CLEARED_CONDITIONS: Final[frozenset[Condition]] = _SILENCES | PIPELINE_CONDITIONS

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]

#: Severities ordered from least to most severe; an index is a severity's rank.
SEVERITIES: Final[tuple[Severity, ...]] = ("warning", "critical")


class EventDecodeError(ValueError):
    """A payload that is not a valid event; the message names the field and the problem."""


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """One temperature reading, as it travels on ``telemetry.readings``.

    ``(device_id, metric, ts)`` is its natural key: a redelivered duplicate has the same key.
    """

    v: Literal[1] = SCHEMA_VERSION
    device_id: NonEmpty
    metric: NonEmpty = "temperature"
    value: float
    unit: Literal["C"] = "C"
    ts: float
    seq: int | None = None
    received_at: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"`value` must be a finite number, got {self.value!r}")
        if not math.isfinite(self.ts):
            raise ValueError(f"`ts` must be a finite number, got {self.ts!r}")

    @property
    def natural_key(self) -> tuple[str, str, float]:
        """The key every store is idempotent on."""
        return (self.device_id, self.metric, self.ts)


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One (device, rule) breach in one batch, for its worst reading (``telemetry.alerts``)."""

    v: Literal[1] = SCHEMA_VERSION
    alert_id: NonEmpty
    device_id: NonEmpty
    metric: NonEmpty
    rule_id: NonEmpty
    severity: Severity
    condition: Condition
    threshold: float
    value: float
    reading_ts: float
    detected_at: float


class Watermark(msgspec.Struct, frozen=True, kw_only=True):
    """A processor's progress, sent on ``telemetry.alerts`` next to the alerts (to every partition).

    "Function ``source`` has processed the readings of ``topic`` partition ``partition`` (of
    ``partitions``) up to event time ``event_time``, and every alert from them is already on
    this topic, before this record." A reading's event time is ``min(ts, received_at)``: a
    device clock running ahead cannot push it forward, and a backlog keeps its device times.
    ``idle`` says the partition is caught up and has had no reading for a while: consumers
    leave it out of the pipeline's watermark (the minimum over the partitions that are not).

    On the wire the record carries the header ``kind: watermark`` (:data:`WATERMARK_HEADER`)
    and no key; alert consumers tell the two apart by the header, the ``kind`` field makes the
    value self-describing.
    """

    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["watermark"] = "watermark"
    source: NonEmpty
    topic: NonEmpty
    partition: Annotated[int, msgspec.Meta(ge=0)]
    partitions: Annotated[int, msgspec.Meta(ge=1)]
    event_time: float
    idle: bool = False
    emitted_at: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.event_time):
            raise ValueError(f"`event_time` must be a finite number, got {self.event_time!r}")
        if self.partition >= self.partitions:
            raise ValueError(f"`partition` {self.partition} is not below `partitions` {self.partitions}")


#: The header that marks a ``telemetry.alerts`` record as a :class:`Watermark`, not an alert.
HEADER_KIND: Final = "kind"
WATERMARK_KIND: Final = b"watermark"
WATERMARK_HEADERS: Final[list[tuple[str, bytes]]] = [(HEADER_KIND, WATERMARK_KIND)]


def is_watermark(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """Whether a ``telemetry.alerts`` record's headers mark it as a watermark."""
    return any(name == HEADER_KIND and value == WATERMARK_KIND for name, value in headers or ())


class Clear(msgspec.Struct, frozen=True, kw_only=True):
    """A condition of :data:`CLEARED_CONDITIONS` has ended: the device (or the partition) is heard from again.

    Sent on ``telemetry.alerts`` with the key and partition of the device's alerts, after the
    alert it ends, with the header ``kind: clear``. ``since`` is the ended alert's
    ``reading_ts`` (the last reading before the silence) and ``cleared_at`` the event time of
    the reading that ended it (its ``received_at``): the incident resolves at ``cleared_at``.
    Both come from the readings, so a replay sends the same clear.

    For the pipeline's own conditions (:data:`PIPELINE_CONDITIONS`), ``since`` is the ended
    alert's ``reading_ts`` (when the trouble began) and ``cleared_at`` the time the watching
    process first saw it over; a process ending an incident an earlier one raised clears with
    ``since == cleared_at``, which ends any incident of the rule opened before.
    """

    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["clear"] = "clear"
    device_id: NonEmpty
    rule_id: NonEmpty
    condition: Condition
    since: float
    cleared_at: float
    detected_at: float


CLEAR_KIND: Final = b"clear"
CLEAR_HEADERS: Final[list[tuple[str, bytes]]] = [(HEADER_KIND, CLEAR_KIND)]


def is_clear(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """Whether a ``telemetry.alerts`` record's headers mark it as a :class:`Clear`."""
    return any(name == HEADER_KIND and value == CLEAR_KIND for name, value in headers or ())


#: The longest note an acknowledgement may carry, in characters.
ACK_NOTE_MAX: Final = 1_000
#: The longest name of who acknowledged, in characters (as any other id).
ACK_BY_MAX: Final = 256
# Characters no ack text may hold besides the C0/C1 controls: the bidi overrides and isolates,
# which make a note display other than it reads ("trojan source"), and the line/paragraph
# separators, which break lines where logs, JSON-in-HTML and chat renderers don't expect it.
_ACK_REFUSED: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


def ack_text_problem(name: str, text: str, *, max_chars: int, multiline: bool) -> str | None:
    """Why ``text`` cannot be an acknowledgement's ``name`` (who, or the note), or None if it can.

    Refused, not stripped: an operator sees the error and retypes, where a silently changed note
    would say something other than what they wrote. Control characters (escape sequences,
    NUL, DEL, C1), lone surrogates and bidi overrides are refused; a note (``multiline``) may
    hold newlines and tabs.

    >>> ack_text_problem("note", "door open\\nchecked at 03:10", max_chars=1000, multiline=True) is None
    True
    >>> ack_text_problem("note", "ok\\x1b[2J", max_chars=1000, multiline=True)
    'note: control character U+001B at position 3 is not allowed (only newlines and tabs are)'
    >>> ack_text_problem("by", "x" * 300, max_chars=256, multiline=False)
    'by is 300 characters long; at most 256 are allowed'
    """
    if len(text) > max_chars:
        return f"{name} is {len(text):,} characters long; at most {max_chars:,} are allowed"
    for position, char in enumerate(text, start=1):
        if multiline and char in "\n\t":
            continue
        category = unicodedata.category(char)
        if category in ("Cc", "Cs") or char in _ACK_REFUSED:
            what = "surrogate" if category == "Cs" else "control character"
            allowed = "only newlines and tabs are" if multiline else "it must be one line of text"
            return f"{name}: {what} U+{ord(char):04X} at position {position} is not allowed ({allowed})"
    return None


class Ack(msgspec.Struct, frozen=True, kw_only=True):
    """An operator acknowledged an open incident: stop repeating it, tell the channels who and why.

    Sent on ``telemetry.alerts`` with the device's key (so after the alerts that opened the
    incident, on their partition) and the header ``kind: ack``, by the one function that
    acknowledges (:func:`thermoflow.alerts.ack.acknowledge_incident`), once per acknowledgement.
    ``incident_id`` names the incident exactly (``opened_at`` is what the store kept, rounded to
    microseconds, for people); ``incident_kind`` with ``device_id`` and ``rule_id`` find it.
    ``acknowledged_at`` is when the store recorded it, the same in every replay.
    """

    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["ack"] = "ack"
    incident_id: NonEmpty
    device_id: NonEmpty
    rule_id: NonEmpty
    incident_kind: IncidentKind
    opened_at: float
    acknowledged_by: NonEmpty
    acknowledged_at: float
    note: Annotated[str, msgspec.Meta(max_length=ACK_NOTE_MAX)] = ""

    def __post_init__(self) -> None:
        for name, value in (("opened_at", self.opened_at), ("acknowledged_at", self.acknowledged_at)):
            if not math.isfinite(value):
                raise ValueError(f"`{name}` must be a finite number, got {value!r}")
        problem = ack_text_problem(
            "acknowledged_by", self.acknowledged_by, max_chars=ACK_BY_MAX, multiline=False
        ) or ack_text_problem("note", self.note, max_chars=ACK_NOTE_MAX, multiline=True)
        if problem:
            raise ValueError(problem)


ACK_KIND: Final = b"ack"
ACK_HEADERS: Final[list[tuple[str, bytes]]] = [(HEADER_KIND, ACK_KIND)]


def is_ack(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """Whether a ``telemetry.alerts`` record's headers mark it as an :class:`Ack`."""
    return any(name == HEADER_KIND and value == ACK_KIND for name, value in headers or ())


def incident_kind(condition: Condition) -> IncidentKind:
    """The kind an incident of this condition is: one open incident per (device, rule, kind).

    >>> incident_kind("above"), incident_kind("below"), incident_kind("offline")
    ('threshold', 'threshold', 'offline')
    """
    if condition == "above" or condition == "below":
        return "threshold"
    return condition


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """What the headers of a ``telemetry.deadletter`` record say about the original bytes."""

    error: str
    stage: Stage
    source: str
    failed_at: float


_blake2b: Final = hashlib.blake2b


def stable_id(*parts: str, size: int = 16) -> str:
    """A hex id of ``size`` bytes from ``parts`` (BLAKE2b over them joined by U+001F).

    The alert, incident and notification ids are stored and compared across processes, so
    their parts must keep exactly their text (floats as ``repr``).

    >>> stable_id("a", "b", size=4)
    '1c6ce4dd'
    """
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=size).hexdigest()


def alert_id(
    *, device_id: str, rule_id: str, severity: str, reading_ts: float, condition: Condition = "above"
) -> str:
    """A stable id for an alert: the same reading re-processed yields the same id.

    Threshold alerts (``above``/``below``) keep the id they always had; the detectors' kinds
    add theirs, so a reading that is both stuck and a rate breach gives two alerts.

    >>> a = alert_id(device_id="f-1", rule_id="r", severity="critical", reading_ts=1.5)
    >>> a == alert_id(device_id="f-1", rule_id="r", severity="critical", reading_ts=1.5), len(a)
    (True, 32)
    >>> a == alert_id(device_id="f-1", rule_id="r", severity="critical", reading_ts=1.5, condition="stuck")
    False
    """
    kind = incident_kind(condition)
    if kind == "threshold":
        return stable_id(device_id, rule_id, severity, repr(reading_ts))
    return stable_id(device_id, rule_id, severity, repr(reading_ts), kind)


def new_alert(
    *,
    device_id: str,
    metric: str,
    rule_id: str,
    severity: Severity,
    condition: Condition,
    threshold: float,
    value: float,
    reading_ts: float,
    detected_at: float,
) -> AlertEvent:
    """An alert event with its ``alert_id`` derived from its own fields (:func:`alert_id`).

    The id's text is built here in one f-string, the same text :func:`alert_id` joins: a
    worker builds thousands of alerts a second, and the two calls and the join cost more
    than the hash.
    """
    if condition == "above" or condition == "below":  # the threshold kind: the id it always had
        text = f"{device_id}\x1f{rule_id}\x1f{severity}\x1f{reading_ts!r}"
    else:
        text = f"{device_id}\x1f{rule_id}\x1f{severity}\x1f{reading_ts!r}\x1f{condition}"
    return AlertEvent(
        alert_id=_blake2b(text.encode(), digest_size=16).hexdigest(),
        device_id=device_id,
        metric=metric,
        rule_id=rule_id,
        severity=severity,
        condition=condition,
        threshold=threshold,
        value=value,
        reading_ts=reading_ts,
        detected_at=detected_at,
    )


_encoder: Final = msgspec.json.Encoder()
_Event = TypeVar("_Event")
#: What msgspec raises on a value from outside: not JSON, not the type, out of range, or nested
#: past the stack (an unknown field a thousand levels deep: the bridge refuses such a payload,
#: but any producer can write to a topic, and a consumer must not crash on it and read it again
#: after its restart).
DECODE_ERRORS: Final = (msgspec.DecodeError, ValueError, RecursionError)
_reading_decoder: Final = msgspec.json.Decoder(Reading)
_alert_decoder: Final = msgspec.json.Decoder(AlertEvent)
_watermark_decoder: Final = msgspec.json.Decoder(Watermark)
_clear_decoder: Final = msgspec.json.Decoder(Clear)
_ack_decoder: Final = msgspec.json.Decoder(Ack)


def encode(event: Reading | AlertEvent | Watermark | Clear | Ack) -> bytes:
    """Serialize an event to its JSON wire form."""
    return _encoder.encode(event)


def _decode(decoder: msgspec.json.Decoder[_Event], payload: bytes | memoryview, what: str) -> _Event:
    """One value decoded and validated, or an :class:`EventDecodeError` saying why not
    (any of :data:`DECODE_ERRORS`: the record is dead-lettered with it)."""
    try:
        return decoder.decode(payload)
    except DECODE_ERRORS as exc:
        raise EventDecodeError(f"invalid {what}: {exc}") from None


def decode_reading(payload: bytes | memoryview) -> Reading:
    """Decode and validate one ``telemetry.readings`` value."""
    return _decode(_reading_decoder, payload, "reading")


def _strict_reading() -> type[msgspec.Struct]:
    """``Reading``'s fields, types and defaults, unknown fields refused, without ``__post_init__``.

    Its ``__post_init__`` checks finiteness at a Python call per reading, and JSON cannot carry
    a non-finite number (msgspec rejects ``1e999`` as out of range), so it can never fail here.
    Built from ``Reading`` itself, so the two cannot drift apart.
    """
    fields = [
        (f.name, f.type) if f.required else (f.name, f.type, f.default)
        for f in msgspec.structs.fields(Reading)
    ]
    # gc=False: a decoded reading holds only strings and numbers, so it can never be part of a
    # reference cycle, and the garbage collector need not track a batch's thousands of them.
    return msgspec.defstruct(
        "WireReading", fields, kw_only=True, frozen=True, forbid_unknown_fields=True, gc=False
    )


#: A reading as :func:`decode_readings` gives it: ``Reading``'s fields, read the same way.
WireReading: Final = _strict_reading()
_wrapped_readings: Final = msgspec.json.Decoder(list[tuple[WireReading]])  # type: ignore[valid-type]
#: Between two values in :func:`decode_readings`' one document.
_BETWEEN: Final = b"]\n,["


def decode_readings(values: Sequence[bytes | None]) -> list[Any] | None:
    """Many ``telemetry.readings`` values decoded by one call, a :data:`WireReading` each, in order;
    or None when any of them is not one valid reading alone (decode those one by one,
    :func:`decode_reading`, which also says what is wrong).

    One call, not one per value: the values become one document, ``[[v1]\\n,[v2]\\n,...]``, read
    as a list of one-reading arrays. A hostile value cannot make another's bytes part of its
    reading, so a reading always comes from exactly one value:

    - the separator's ``]`` is never inside a string: the newline after it would be, and JSON
      refuses a raw control character in a string. So it closes an array, and a reading holds
      none (every field is a string or a number; an unknown field, which could hold any JSON,
      is refused), so it closes a one-reading array. Each value is therefore whole arrays;
    - each array holds exactly one reading (the tuple type), and each value at least one array,
      so as many readings as values means one per value.

    >>> ok = b'{"device_id": "a", "value": 1.5, "ts": 10.0, "received_at": 10.1}'
    >>> [r.value for r in decode_readings([ok, ok])]
    [1.5, 1.5]
    >>> half = ok[:30], ok[30:]  # two halves that would join into one reading
    >>> decode_readings([*half]), decode_readings([ok + b"," + ok, b" "]), decode_readings([ok, None])
    (None, None, None)
    """
    if not values:
        return []
    try:
        wrapped = _wrapped_readings.decode(b"".join((b"[[", _BETWEEN.join(values), b"]]")))  # type: ignore[arg-type]
    except (msgspec.DecodeError, TypeError):  # TypeError: a None value (a tombstone)
        return None
    return [reading for (reading,) in wrapped] if len(wrapped) == len(values) else None


def decode_alert(payload: bytes | memoryview) -> AlertEvent:
    """Decode and validate one ``telemetry.alerts`` value."""
    return _decode(_alert_decoder, payload, "alert event")


def decode_watermark(payload: bytes | memoryview) -> Watermark:
    """Decode and validate one watermark record of ``telemetry.alerts``."""
    return _decode(_watermark_decoder, payload, "watermark")


def decode_clear(payload: bytes | memoryview) -> Clear:
    """Decode and validate one clear record of ``telemetry.alerts``."""
    return _decode(_clear_decoder, payload, "clear")


def decode_ack(payload: bytes | memoryview) -> Ack:
    """Decode and validate one ack record of ``telemetry.alerts``."""
    return _decode(_ack_decoder, payload, "ack")


KafkaHeaders = list[tuple[str, bytes]]


#: Characters of a dead letter's ``error`` and ``source`` kept in its headers: a reason can quote
#: the input and an MQTT topic can be 64 KiB, and the whole record must fit in one Kafka request.
DEAD_LETTER_TEXT_MAX: Final = 1_000


def dead_letter_headers(letter: DeadLetter) -> KafkaHeaders:
    """The Kafka headers that carry a dead letter's reason next to the bytes.

    Whatever the texts hold, the headers are valid UTF-8 of bounded size (lone surrogates become
    ``?``, a text past :data:`DEAD_LETTER_TEXT_MAX` characters is cut and ends in ``…``).
    """
    return [
        (topics.HEADER_ERROR, _header_text(letter.error)),
        (topics.HEADER_STAGE, letter.stage.encode()),
        (topics.HEADER_SOURCE, _header_text(letter.source)),
        (topics.HEADER_FAILED_AT, repr(letter.failed_at).encode()),
    ]


def _header_text(text: str) -> bytes:
    if len(text) > DEAD_LETTER_TEXT_MAX:
        text = text[: DEAD_LETTER_TEXT_MAX - 1] + "…"
    return text.encode("utf-8", "replace")


def dead_letter_body(original: bytes, *, max_bytes: int) -> tuple[bytes, KafkaHeaders]:
    """A dead letter's value and its extra headers: the original bytes if they fit in ``max_bytes``.

    Larger ones are cut to their first ``max_bytes``, so that the dead letter always fits in a
    Kafka record, with headers ``truncated: true``, ``original-size`` and ``original-sha256``
    (hex) to tell the original by.

    >>> dead_letter_body(b"abc", max_bytes=3)
    (b'abc', [])
    >>> body, headers = dead_letter_body(b"abcd", max_bytes=3)
    >>> body, headers[:2]
    (b'abc', [('truncated', b'true'), ('original-size', b'4')])
    """
    if len(original) <= max_bytes:
        return original, []
    return original[:max_bytes], [
        (topics.HEADER_TRUNCATED, b"true"),
        (topics.HEADER_ORIGINAL_SIZE, str(len(original)).encode()),
        (topics.HEADER_ORIGINAL_SHA256, hashlib.sha256(original).hexdigest().encode()),
    ]


def parse_dead_letter_headers(headers: Sequence[tuple[str, bytes]]) -> DeadLetter:
    """Read a dead letter's reason back from its Kafka headers."""
    found = {name: value.decode("utf-8", "replace") for name, value in headers}
    missing = [
        name
        for name in (
            topics.HEADER_ERROR,
            topics.HEADER_STAGE,
            topics.HEADER_SOURCE,
            topics.HEADER_FAILED_AT,
        )
        if name not in found
    ]
    if missing:
        raise EventDecodeError(f"dead letter lacks header(s): {', '.join(missing)}")
    try:
        return msgspec.convert(
            {
                "error": found[topics.HEADER_ERROR],
                "stage": found[topics.HEADER_STAGE],
                "source": found[topics.HEADER_SOURCE],
                "failed_at": float(found[topics.HEADER_FAILED_AT]),
            },
            DeadLetter,
        )
    except (ValueError, msgspec.ValidationError) as exc:
        raise EventDecodeError(f"invalid dead letter headers: {exc}") from None


def kafka_source(*, topic: str, partition: int, offset: int) -> str:
    """The ``source`` header of a dead letter that came from Kafka: ``topic/partition/offset``."""
    return f"{topic}/{partition}/{offset}"
