"""Payload codecs: the bytes of one MQTT message to readings in °C, or a reason why not.

Pure: no I/O, no clock (the caller passes ``received_at``). The format is detected per
message: a JSON object, a bare number, or a SenML pack (RFC 8428)::

    >>> from ingest.mapping import TopicFields
    >>> fields = TopicFields(device_id="freezer-0042", metric="temperature")
    >>> [r.value for r in decode_payload(b'{"temp": 0.5, "unit": "F"}', fields=fields, received_at=1.0)]
    [-17.5]
    >>> decode_payload(b"21.5", fields=fields, received_at=1.0)[0].ts
    1.0
    >>> decode_payload(b'{"value": "warm"}', fields=fields, received_at=1.0)
    Traceback (most recent call last):
    ...
    ingest.codecs.PayloadError: `value` must be a number, got str
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final

import msgspec

from ingest.mapping import TopicFields
from thermoflow.events import Reading

DEFAULT_METRIC: Final = "temperature"
_MAX_ID_LENGTH: Final = 256
_VALUE_KEYS: Final = ("value", "temperature", "temp")
_TS_KEYS: Final = ("ts", "timestamp", "time")

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


class PayloadError(ValueError):
    """A payload that yields no valid reading; the message is the reason, fit for a dead letter."""


def decode_payload(
    payload: bytes, *, fields: TopicFields | None, received_at: float, max_bytes: int = 65_536
) -> list[Reading]:
    """Decode one MQTT payload into one or more readings (several for a SenML pack).

    Args:
        payload: the message's bytes.
        fields: what the topic says (device id, metric); None when it did not fit the template.
        received_at: when the bridge received it (epoch seconds); also ``ts`` when the device sent none.
        max_bytes: larger payloads are refused without being parsed.

    Raises:
        PayloadError: with a human-readable reason.
    """
    if len(payload) > max_bytes:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        document = _json.decode(payload)
    except msgspec.DecodeError as exc:
        return [_bare_number(payload, exc, fields=fields, received_at=received_at)]
    if isinstance(document, dict):
        return [_from_object(document, fields=fields, received_at=received_at)]
    if isinstance(document, list):
        return _from_senml(document, fields=fields, received_at=received_at)
    if isinstance(document, int | float) and not isinstance(document, bool):
        return [
            _reading(fields, None, value=float(document), unit="C", ts=received_at, received_at=received_at)
        ]
    raise PayloadError(f"payload is a JSON {type(document).__name__}, not an object, number or SenML array")


def _bare_number(
    payload: bytes, error: msgspec.DecodeError, *, fields: TopicFields | None, received_at: float
) -> Reading:
    """Not JSON: a number in text JSON does not allow (``+21.5``, ``nan``), or garbage."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        value = float(text)
    except ValueError:
        if text.lstrip().startswith(("{", "[")):
            raise PayloadError(f"payload is not valid JSON: {error}") from None
        raise PayloadError(f"payload is neither JSON nor a number: {error}") from None
    return _reading(fields, None, value=value, unit="C", ts=received_at, received_at=received_at)


def _from_object(document: dict[str, Any], *, fields: TopicFields | None, received_at: float) -> Reading:
    key = next((k for k in _VALUE_KEYS if k in document), None)
    if key is None:
        raise PayloadError("JSON object has no `value` (or `temperature`, `temp`)")
    raw_ts = next((document[k] for k in _TS_KEYS if k in document), None)
    seq = document.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
        raise PayloadError(f"`seq` must be an integer, got {type(seq).__name__}")
    unit = document.get("unit", document.get("u", "C"))
    return _reading(
        fields,
        document,
        value=_number(document[key], key),
        unit=unit,
        ts=received_at if raw_ts is None else parse_timestamp(raw_ts),
        received_at=received_at,
        seq=seq,
    )


def _from_senml(pack: list[Any], *, fields: TopicFields | None, received_at: float) -> list[Reading]:
    """Resolve a SenML pack (RFC 8428 section 4.6): base name, time, unit and value carry forward."""
    if not pack:
        raise PayloadError("SenML pack is empty")
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
        unit = record.get("u", base_unit) or "C"
        device_id, metric = _senml_name(name, fields)
        readings.append(
            _reading(
                TopicFields(device_id=device_id, metric=metric),
                None,
                value=base_value + _number(record["v"], f"{where} `v`"),
                unit=unit,
                ts=received_at + time if abs(time) < _SENML_RELATIVE_BELOW else time,
                received_at=received_at,
                what=where,
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
    received_at: float,
    seq: int | None = None,
    what: str = "payload",
) -> Reading:
    device_id = fields.device_id if fields else None
    metric = fields.metric if fields else None
    if document is not None:
        device_id = device_id or document.get("device_id")
        metric = metric or document.get("metric")
    if not device_id:
        raise PayloadError(f"{what} has no device id: the topic does not name one and the payload neither")
    if not isinstance(device_id, str) or len(device_id) > _MAX_ID_LENGTH:
        raise PayloadError(f"device id must be a string of at most {_MAX_ID_LENGTH} characters")
    metric = metric or DEFAULT_METRIC
    if not isinstance(metric, str) or len(metric) > _MAX_ID_LENGTH:
        raise PayloadError(f"metric must be a string of at most {_MAX_ID_LENGTH} characters")
    celsius = to_celsius(value, unit)
    if not math.isfinite(celsius):
        raise PayloadError(f"{what}: value is not a finite number: {value!r}")
    if not math.isfinite(ts):
        raise PayloadError(f"{what}: timestamp is not finite: {ts!r}")
    return Reading(device_id=device_id, metric=metric, value=celsius, ts=ts, seq=seq, received_at=received_at)


def to_celsius(value: float, unit: Any) -> float:
    """Convert from °C, °F or K (any spelling in :data:`UNITS`).

    >>> to_celsius(212.0, "degF"), to_celsius(273.15, "K"), to_celsius(-18.0, "Cel")
    (100.0, 0.0, -18.0)
    """
    scale = UNITS.get(unit.strip().lower()) if isinstance(unit, str) else None
    if scale is None:
        raise PayloadError(f"unknown unit {unit!r}; known: °C (C, Cel), °F (F, degF), K")
    if scale == "F":
        return (value - 32.0) * 5.0 / 9.0
    if scale == "K":
        return value - 273.15
    return value


def parse_timestamp(raw: Any) -> float:
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
            raise PayloadError(f"timestamp {raw!r} is neither epoch seconds nor RFC 3339") from None
        if moment.tzinfo is None:
            raise PayloadError(f"timestamp {raw!r} has no time zone offset (RFC 3339 requires one)")
        return moment.timestamp()
    ts = _number(raw, "timestamp")
    if not math.isfinite(ts) or ts < 0:
        raise PayloadError(f"timestamp must be a finite, non-negative epoch time, got {raw!r}")
    if ts > _US_ABOVE:
        return ts / 1e6
    if ts > _MS_ABOVE:
        return ts / 1e3
    return ts


def _number(raw: Any, what: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise PayloadError(f"`{what}` must be a number, got {type(raw).__name__}")
    return float(raw)


def _text(raw: Any, what: str) -> str:
    if not isinstance(raw, str):
        raise PayloadError(f"{what} must be a string, got {type(raw).__name__}")
    return raw
