"""Payload codecs: the bytes of one MQTT message to readings in °C, or a reason why not.

Pure: no I/O, no clock (the caller passes ``received_at``). The format is detected per
message: a JSON object, a bare number, or a SenML pack (RFC 8428)::

    >>> from thermoflow.ingest.mapping import TopicFields
    >>> fields = TopicFields(device_id="freezer-0042", metric="temperature")
    >>> [r.value for r in decode_payload(b'{"temp": 0.5, "unit": "F"}', fields=fields, received_at=1.0)]
    [-17.5]
    >>> decode_payload(b"21.5", fields=fields, received_at=1.0)[0].ts
    1.0
    >>> decode_payload(b'{"value": "warm"}', fields=fields, received_at=1.0)
    Traceback (most recent call last):
    ...
    thermoflow.ingest.codecs.PayloadError: `value` must be a number, got str

Every reading that comes out can be stored downstream (the bridge's output contract): device
id and metric are printable text of at most 256 characters, ``value`` is finite in °C, ``ts``
lies in a window around the receive time, ``seq`` fits in int64. Whatever else a payload holds,
the only exception that leaves :func:`decode_payload` is :class:`PayloadError`, whose message
names the field that was wrong.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final, NamedTuple

import msgspec

from thermoflow.events import Reading
from thermoflow.ingest.mapping import TopicFields

DEFAULT_METRIC: Final = "temperature"
#: Device ids and metrics: the ``telemetry.readings`` contract's limit (events.NonEmpty).
MAX_ID_LENGTH: Final = 256
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_BOM: Final = b"\xef\xbb\xbf"

#: Unit spellings (lower-cased) to the scale they are in; SenML uses "Cel" and "K".
UNITS: Final[dict[str, str]] = {
    "c": "C", "°c": "C", "cel": "C", "degc": "C", "celsius": "C",
    "f": "F", "°f": "F", "degf": "F", "fahrenheit": "F",
    "k": "K", "kelvin": "K",
}  # fmt: skip

# Epoch numbers above these are milliseconds / microseconds (1e11 s is the year 5138).
_MS_ABOVE: Final = 1e11
_US_ABOVE: Final = 1e14
# RFC 8428 section 4.5.3: a SenML time below 2**28 is relative to now.
_SENML_RELATIVE_BELOW: Final = 2.0**28

_json: Final = msgspec.json.Decoder()


class _Plain(msgspec.Struct, forbid_unknown_fields=True):
    """The payload nearly every device sends: ``{"value": 21.5, "ts": ..., "seq": 7, "unit": "C"}``.

    Decoded into a struct in C, it skips the dict and its lookups (a third of decoding). Any
    other key or type fails the decode, and the payload takes the general path, which alone
    words the reasons: the fast path only ever returns a reading the general path would return.
    """

    value: float
    ts: float = math.nan  # absent (JSON has no NaN)
    seq: int | None = None
    unit: str = "C"


_plain: Final = msgspec.json.Decoder(_Plain)


class _Wire(msgspec.Struct, kw_only=True, gc=False):
    """:class:`~thermoflow.events.Reading`'s fields in its order, for encoding only: the same JSON.

    Built from values already checked, it skips ``Reading.__post_init__``, a Python call per
    reading; tests/unit/ingest/test_codecs.py holds the two to the same fields and bytes.
    """

    v: int = 1
    device_id: str
    metric: str
    value: float
    unit: str = "C"
    ts: float
    seq: int | None = None
    received_at: float


_wire: Final = msgspec.json.Encoder()
#: A :class:`_Wire` (from :func:`plain_wire`) to its ``telemetry.readings`` value.
encode_wire: Final = _wire.encode


class PayloadError(ValueError):
    """A payload that yields no valid reading; the message is the reason, fit for a dead letter."""


class PayloadLimits(NamedTuple):
    """What the bridge accepts (the ``IngestSettings`` of the same names set them)."""

    max_bytes: int = 65_536  #: larger payloads are refused unparsed
    max_depth: int = 32  #: JSON nesting (a reading object is 1, a SenML pack 2)
    max_records: int = 1_000  #: records in one SenML pack
    max_age: float = 7 * 86_400.0  #: seconds ``ts`` may lie before the receive time
    max_ahead: float = 600.0  #: seconds ``ts`` may lie after the receive time


DEFAULT_LIMITS: Final = PayloadLimits()


def decode_payload(
    payload: bytes,
    *,
    fields: TopicFields | None,
    received_at: float,
    limits: PayloadLimits = DEFAULT_LIMITS,
    plain: bool = True,
) -> list[Reading]:
    """Decode one MQTT payload into one or more readings (several for a SenML pack).

    Args:
        payload: the message's bytes.
        fields: what the topic says (device id, metric); None when it did not fit the template.
        received_at: when the bridge received it (epoch seconds); also ``ts`` when the device sent none.
        limits: sizes and the timestamp window; a payload beyond ``max_bytes`` is refused unparsed.
        plain: try the fast path of plain payloads first; False when the caller's own
            :func:`plain_record` declined this payload already (the same check: no second decode).

    Raises:
        PayloadError: with a human-readable reason (and no other exception).
    """
    if len(payload) > limits.max_bytes:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds the limit of {limits.max_bytes}")
    if payload.startswith(_BOM):  # RFC 8259 section 8.1: a parser may ignore a byte order mark
        payload = payload[3:]
    if plain and fields is not None and fields.device_id and payload[:1] == b"{":
        reading = _plain_reading(payload, fields=fields, received_at=received_at, limits=limits)
        if reading is not None:
            return [reading]
    try:
        document = _json.decode(payload)
    except msgspec.DecodeError as exc:
        return [_bare_number(payload, exc, fields=fields, received_at=received_at, limits=limits)]
    except RecursionError:
        raise PayloadError(f"JSON nesting is deeper than {limits.max_depth} levels") from None
    # Nesting cannot be deeper than the count of brackets: the exact walk is for the rare payload.
    if payload.count(b"{") + payload.count(b"[") > limits.max_depth:
        depth = json_depth(document, limit=limits.max_depth)
        if depth > limits.max_depth:
            raise PayloadError(f"JSON nesting is deeper than {limits.max_depth} levels")
    if isinstance(document, dict):
        return [_from_object(document, fields=fields, received_at=received_at, limits=limits)]
    if isinstance(document, list):
        return _from_senml(document, fields=fields, received_at=received_at, limits=limits)
    if isinstance(document, int | float) and not isinstance(document, bool):
        value = _number(document, "payload")
        return [_reading(fields, None, value=value, unit="C", ts=received_at, at=received_at, limits=limits)]
    raise PayloadError(f"payload is a JSON {type(document).__name__}, not an object, number or SenML array")


def _plain_reading(
    payload: bytes, *, fields: TopicFields, received_at: float, limits: PayloadLimits
) -> Reading | None:
    """The reading of a :class:`_Plain` payload from a topic naming its device; None: not one, or
    not valid (the general path then says why)."""
    device_id, metric = fields.device_id, fields.metric or DEFAULT_METRIC
    if not (device_id and _valid_id(device_id) and _valid_id(metric)):
        return None
    wire = plain_wire(payload, device_id=device_id, metric=metric, received_at=received_at, limits=limits)
    if wire is None:
        return None
    value, ts, seq = wire.value, wire.ts, wire.seq
    return Reading(device_id=device_id, metric=metric, value=value, ts=ts, seq=seq, received_at=received_at)


def plain_record(
    payload: bytes, *, device_id: str, metric: str, received_at: float, limits: PayloadLimits
) -> bytes | None:
    """The ``telemetry.readings`` value of a :class:`_Plain` payload, encoded; None: not one, or not
    valid (the general path, :func:`decode_payload`, then decodes it or says why).

    The bridge's path for nearly every message: no :class:`~thermoflow.events.Reading` is built, and
    the caller checked ``device_id`` and ``metric`` once for the topic (:func:`check_id`). It
    returns only what ``encode(decode_payload(...)[0])`` would, and refuses the rest.
    """
    wire = plain_wire(payload, device_id=device_id, metric=metric, received_at=received_at, limits=limits)
    return None if wire is None else _wire.encode(wire)


def plain_wire(
    payload: bytes, *, device_id: str, metric: str, received_at: float, limits: PayloadLimits
) -> _Wire | None:
    """A :class:`_Plain` payload decoded and checked as the general path would; None: not a plain
    payload, or one the general path must decide (a reason to word, a timestamp in ms or µs).

    The one fast step behind :func:`plain_record` and :func:`decode_payload`; the bridge's
    translator calls it and :data:`encode_wire` itself (one Python call less per message).
    ``device_id`` and ``metric`` are the caller's, already valid ids.
    """
    if len(payload) > limits.max_bytes:
        return None
    try:
        plain = _plain.decode(payload)
    except msgspec.DecodeError:
        return None
    seq, ts, value, unit = plain.seq, plain.ts, plain.value, plain.unit
    if seq is not None and not _INT64_MIN <= seq <= _INT64_MAX:
        return None
    if ts != ts:  # absent
        ts = received_at
    elif ts > _MS_ABOVE or ts < 0.0 or not math.isfinite(ts):
        return None  # milliseconds, microseconds or no time: the general path's parse_timestamp
    if not received_at - limits.max_age <= ts <= received_at + limits.max_ahead:
        return None
    if unit != "C":
        try:
            value = to_celsius(value, unit)
        except PayloadError:
            return None
    if not math.isfinite(value):
        return None
    return _Wire(device_id=device_id, metric=metric, value=value, ts=ts, seq=seq, received_at=received_at)


def json_depth(document: Any, *, limit: int) -> int:
    """How deeply ``document`` nests containers (a scalar is 0), counting no further than ``limit + 1``.

    Iterative, so a hostile document cannot exhaust the stack.

    >>> json_depth(1, limit=8), json_depth([{"v": 1}], limit=8), json_depth([[[[]]]], limit=2)
    (0, 2, 3)
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return deepest


def _bare_number(
    payload: bytes,
    error: msgspec.DecodeError,
    *,
    fields: TopicFields | None,
    received_at: float,
    limits: PayloadLimits,
) -> Reading:
    """Not JSON: a number in text JSON does not allow (``+21.5``, ``nan``), or garbage."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    # float() would also take "1_000" and digits of any script: only ASCII number syntax is a number.
    stripped = text.strip(" \t\r\n")
    if not stripped.isascii() or "_" in stripped:
        value = None
    else:
        try:
            value = float(stripped)
        except ValueError:
            value = None
    if value is None:
        if stripped.startswith(("{", "[")):
            raise PayloadError(f"payload is not valid JSON: {error}") from None
        raise PayloadError(f"payload is neither JSON nor a number: {error}") from None
    return _reading(fields, None, value=value, unit="C", ts=received_at, at=received_at, limits=limits)


def _from_object(
    document: dict[str, Any], *, fields: TopicFields | None, received_at: float, limits: PayloadLimits
) -> Reading:
    # Explicit tests, not a generator over the keys: this is the path of nearly every message.
    if "value" in document:
        key = "value"
    elif "temperature" in document:
        key = "temperature"
    elif "temp" in document:
        key = "temp"
    else:
        raise PayloadError("JSON object has no `value` (or `temperature`, `temp`)")
    ts_key = "ts" if "ts" in document else "timestamp" if "timestamp" in document else None
    if ts_key is None and "time" in document:
        ts_key = "time"
    seq = document.get("seq")
    if seq is not None:
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise PayloadError(f"`seq` must be an integer, got {type(seq).__name__}")
        if not _INT64_MIN <= seq <= _INT64_MAX:
            raise PayloadError(f"`seq` {_show(seq)} is outside the int64 range")
    return _reading(
        fields,
        document,
        value=_number(document[key], f"`{key}`"),
        unit=document.get("unit", document.get("u", "C")),
        ts=received_at if ts_key is None else parse_timestamp(document[ts_key], what=f"`{ts_key}`"),
        at=received_at,
        limits=limits,
        seq=seq,
        value_key=key,
        ts_key=ts_key or "ts",
    )


def _from_senml(
    pack: list[Any], *, fields: TopicFields | None, received_at: float, limits: PayloadLimits
) -> list[Reading]:
    """Resolve a SenML pack (RFC 8428 section 4.6): base name, time, unit and value carry forward."""
    if not pack:
        raise PayloadError("SenML pack is empty")
    if len(pack) > limits.max_records:
        raise PayloadError(f"SenML pack has {len(pack)} records, more than the limit of {limits.max_records}")
    base_name, base_time, base_unit, base_value = "", 0.0, None, 0.0
    readings = []
    for index, record in enumerate(pack):
        if not isinstance(record, dict):
            raise PayloadError(f"SenML record {index} is a {type(record).__name__}, not an object")
        where = f"SenML record {index}"
        if "bn" in record:
            base_name = _text(record["bn"], f"{where} `bn`")
        if "bt" in record:
            base_time = _number(record["bt"], f"{where} `bt`")
        if "bu" in record:
            base_unit = _text(record["bu"], f"{where} `bu`")
        if "bv" in record:
            base_value = _number(record["bv"], f"{where} `bv`")
        if "v" not in record:
            if any(k in record for k in ("vs", "vb", "vd", "s")):
                raise PayloadError(f"{where} has no numeric value `v`")
            if index == 0 and any(k in record for k in ("bn", "bt", "bu", "bv", "bver")):
                continue  # a record that only sets base fields
            raise PayloadError(f"{where} has no value `v`")
        name = base_name + _text(record.get("n", ""), f"{where} `n`")
        time = base_time + _number(record.get("t", 0.0), f"{where} `t`")
        device_id, metric = _senml_name(name, fields)
        readings.append(
            _reading(
                TopicFields(device_id=device_id, metric=metric),
                None,
                value=base_value + _number(record["v"], f"{where} `v`"),
                unit=record.get("u", base_unit) or "C",
                ts=received_at + time if abs(time) < _SENML_RELATIVE_BELOW else time,
                at=received_at,
                limits=limits,
                what=f"{where}: ",
                value_key="v",
                ts_key="t",
            )
        )
    if not readings:
        raise PayloadError("SenML pack has no record with a value")
    return readings


def _senml_name(name: str, fields: TopicFields | None) -> tuple[str | None, str | None]:
    """A resolved SenML name's last level (after ``/`` or ``:``) is the metric, the rest the device.

    The topic's device id wins over the name's.
    """
    cut = max(name.rfind("/"), name.rfind(":"))
    name_device, name_metric = (name[:cut].rstrip("/:"), name[cut + 1 :]) if cut >= 0 else ("", name)
    topic_device = fields.device_id if fields else None
    topic_metric = fields.metric if fields else None
    return topic_device or name_device or None, name_metric or topic_metric


def _reading(
    fields: TopicFields | None,
    document: dict[str, Any] | None,
    *,
    value: float,
    unit: Any,
    ts: float,
    at: float,
    limits: PayloadLimits,
    seq: int | None = None,
    what: str = "",
    value_key: str = "value",
    ts_key: str = "ts",
) -> Reading:
    """The reading, once every field is what the ``telemetry.readings`` contract promises."""
    device_id = fields.device_id if fields else None
    metric = fields.metric if fields else None
    if document is not None:
        device_id = device_id or document.get("device_id")
        metric = metric or document.get("metric")
    if not device_id:
        raise PayloadError(f"{what}no device id: the topic does not name one and the payload neither")
    metric = metric or DEFAULT_METRIC
    if not _valid_id(device_id):
        check_id(device_id, f"{what}device id")
    if not _valid_id(metric):
        check_id(metric, f"{what}metric")
    celsius = value if unit == "C" else to_celsius(value, unit)
    if not math.isfinite(celsius):
        raise PayloadError(f"{what}`{value_key}` is not a finite number in °C: {_show(value)} {_show(unit)}")
    if not math.isfinite(ts):
        raise PayloadError(f"{what}`{ts_key}` is not a finite time: {_show(ts)}")
    if ts > at + limits.max_ahead:
        raise PayloadError(
            f"{what}`{ts_key}` {ts!r} is {_span(ts - at)} ahead of the receive time;"
            f" at most {_span(limits.max_ahead)} is allowed"
        )
    if ts < at - limits.max_age:
        raise PayloadError(
            f"{what}`{ts_key}` {ts!r} is {_span(at - ts)} before the receive time;"
            f" at most {_span(limits.max_age)} is allowed"
        )
    return Reading(device_id=device_id, metric=metric, value=celsius, ts=ts, seq=seq, received_at=at)


def _valid_id(text: Any) -> bool:
    """:func:`check_id`'s test, without the reason: inlined on the common path."""
    return type(text) is str and len(text) <= MAX_ID_LENGTH and text.isprintable() and "\ufffd" not in text


def check_id(text: Any, what: str) -> None:
    """A device id or metric: printable text of 1 to :data:`MAX_ID_LENGTH` characters.

    ``str.isprintable`` refuses control characters (U+0000 and the like), format characters,
    separators other than the space, lone surrogates and unassigned code points: none of them
    belongs in an id, and PostgreSQL's text refuses U+0000. U+FFFD stands for bytes that were no
    valid UTF-8 in the topic.

    >>> check_id("freezer-0042", "device id")
    >>> check_id("a\\x00b", "device id")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    thermoflow.ingest.codecs.PayloadError: device id 'a\\x00b' contains U+0000, which is not ...
    """
    if not isinstance(text, str):
        raise PayloadError(f"{what} must be a string, got {type(text).__name__}")
    if len(text) > MAX_ID_LENGTH:
        raise PayloadError(f"{what} of {len(text)} characters is longer than {MAX_ID_LENGTH}")
    if not text.isprintable() or "\ufffd" in text:
        bad = next(c for c in text if not c.isprintable() or c == "\ufffd")
        raise PayloadError(
            f"{what} {_show(text)} contains U+{ord(bad):04X}, which is not a printable character"
        )


def to_celsius(value: float, unit: Any) -> float:
    """Convert from °C, °F or K (any spelling in :data:`UNITS`).

    >>> to_celsius(212.0, "degF"), to_celsius(273.15, "K"), to_celsius(-18.0, "Cel")
    (100.0, 0.0, -18.0)
    """
    scale = UNITS.get(unit.strip().lower()) if isinstance(unit, str) else None
    if scale is None:
        raise PayloadError(f"unknown unit {_show(unit)}; known: °C (C, Cel), °F (F, degF), K")
    if scale == "F":
        return (value - 32.0) * 5.0 / 9.0
    if scale == "K":
        return value - 273.15
    return value


def parse_timestamp(raw: Any, *, what: str = "timestamp") -> float:
    """Epoch seconds from epoch seconds, milliseconds or microseconds, or an RFC 3339 string.

    >>> parse_timestamp(1764218400.5), parse_timestamp(1764218400500)
    (1764218400.5, 1764218400.5)
    >>> parse_timestamp("2025-11-27T04:40:00.5Z")
    1764218400.5
    """
    if isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise PayloadError(f"{what} {_show(raw)} is neither epoch seconds nor RFC 3339") from None
        if moment.tzinfo is None:
            raise PayloadError(f"{what} {_show(raw)} has no time zone offset (RFC 3339 requires one)")
        try:
            return moment.timestamp()
        except (ValueError, OverflowError):  # an offset that moves year 1 or 9999 out of range
            raise PayloadError(f"{what} {_show(raw)} is out of range") from None
    ts = _number(raw, what)
    if not math.isfinite(ts) or ts < 0:
        raise PayloadError(f"{what} must be a finite, non-negative epoch time, got {_show(raw)}")
    if ts > _US_ABOVE:
        return ts / 1e6
    if ts > _MS_ABOVE:
        return ts / 1e3
    return ts


def _number(raw: Any, what: str) -> float:
    if type(raw) is float:
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        try:
            return float(raw)
        except OverflowError:  # JSON allows integers of any length; a float ends near 1.8e308
            raise PayloadError(f"{what} {_show(raw)} is too large for a number") from None
    raise PayloadError(f"{what} must be a number, got {type(raw).__name__}")


def _text(raw: Any, what: str) -> str:
    if not isinstance(raw, str):
        raise PayloadError(f"{what} must be a string, got {type(raw).__name__}")
    return raw


def _show(raw: Any, limit: int = 40) -> str:
    """``repr`` for a reason: short, and safe for an integer of thousands of digits."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw.bit_length() > 128:
        return f"(an integer of about {int(raw.bit_length() * 0.30103) + 1} digits)"
    if isinstance(raw, str) and len(raw) > limit:
        return repr(raw[:limit]) + f"… ({len(raw)} characters)"
    if isinstance(raw, dict | list):
        return f"(a JSON {'object' if isinstance(raw, dict) else 'array'})"
    return repr(raw)


def _span(seconds: float) -> str:
    """A duration for a reason: ``601 s``, ``7 days``, ``3.17e+05 years``.

    >>> _span(600.4), _span(7 * 86_400), _span(1e13)
    ('600 s', '7 days', '3.17e+05 years')
    """
    for size, unit in ((365.25 * 86_400, "years"), (86_400, "days"), (3600, "h")):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.0f} s"
