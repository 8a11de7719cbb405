"""The event contracts: valid inputs decode, invalid ones name the field, round trips hold."""

from __future__ import annotations

import math
import typing

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thermoflow import events
from thermoflow.events import AlertEvent, DeadLetter, EventDecodeError, Reading, Severity

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
device_ids = st.text(min_size=1, max_size=64)

readings = st.builds(
    Reading,
    device_id=device_ids,
    metric=st.sampled_from(["temperature", "humidity"]),
    value=finite,
    ts=finite,
    seq=st.none() | st.integers(min_value=0, max_value=2**53),
    received_at=finite,
)
alerts = st.builds(
    AlertEvent,
    alert_id=st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    device_id=device_ids,
    metric=st.just("temperature"),
    rule_id=st.text(min_size=1, max_size=40),
    severity=st.sampled_from(events.SEVERITIES),
    condition=st.sampled_from(["above", "below"]),
    threshold=finite,
    value=finite,
    reading_ts=finite,
    detected_at=finite,
)


def test_design_md_reading_example_decodes() -> None:
    payload = (
        b'{"v": 1, "device_id": "freezer-0042", "metric": "temperature", "value": -18.2, "unit": "C",'
        b' "ts": 1764218400.123, "seq": 1234, "received_at": 1764218400.130}'
    )
    reading = events.decode_reading(payload)
    assert reading.device_id == "freezer-0042"
    assert reading.value == -18.2
    assert reading.natural_key == ("freezer-0042", "temperature", 1764218400.123)


def test_design_md_alert_example_decodes() -> None:
    payload = (
        b'{"v": 1, "alert_id": "9f2c", "device_id": "freezer-0042", "metric": "temperature",'
        b' "rule_id": "freezer-too-warm", "severity": "critical", "condition": "above",'
        b' "threshold": -10.0, "value": -4.2, "reading_ts": 1764218400.123, "detected_at": 1764218400.180}'
    )
    alert = events.decode_alert(payload)
    assert (alert.severity, alert.condition, alert.threshold) == ("critical", "above", -10.0)


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        (b'{"device_id": "d", "value": "hot", "ts": 1, "received_at": 1}', "$.value"),
        (b'{"device_id": "", "value": 1, "ts": 1, "received_at": 1}', "$.device_id"),
        (b'{"value": 1, "ts": 1, "received_at": 1}', "device_id"),
        (b'{"device_id": "d", "value": 1, "ts": 1, "received_at": 1, "unit": "F"}', "$.unit"),
        (b'{"device_id": "d", "value": 1e999, "ts": 1, "received_at": 1}', "$.value"),
        (b'{"v": 2, "device_id": "d", "value": 1, "ts": 1, "received_at": 1}', "$.v"),
        (b'{"device_id": "d", "value": 1, "ts": 1', "truncated"),
        (b"\xff\xfe", "invalid"),
    ],
)
def test_invalid_reading_names_what_was_wrong(payload: bytes, names: str) -> None:
    with pytest.raises(EventDecodeError, match="invalid reading") as info:
        events.decode_reading(payload)
    assert names in str(info.value)


def test_non_finite_value_is_refused_even_when_built_in_code() -> None:
    with pytest.raises(ValueError, match="finite"):
        msgspec.convert({"device_id": "d", "value": math.nan, "ts": 1.0, "received_at": 1.0}, Reading)


def test_invalid_alert_names_the_field() -> None:
    payload = (
        b'{"alert_id": "a", "device_id": "d", "metric": "t", "rule_id": "r", "severity": "panic",'
        b' "condition": "above", "threshold": 1, "value": 2, "reading_ts": 1, "detected_at": 1}'
    )
    with pytest.raises(EventDecodeError, match=r"\$\.severity"):
        events.decode_alert(payload)


@given(readings)
def test_reading_round_trip(reading: Reading) -> None:
    assert events.decode_reading(events.encode(reading)) == reading


@given(alerts)
def test_alert_round_trip(alert: AlertEvent) -> None:
    assert events.decode_alert(events.encode(alert)) == alert


@given(device_ids, st.text(min_size=1), st.sampled_from(events.SEVERITIES), finite)
def test_alert_id_is_stable_and_sensitive(device_id: str, rule_id: str, severity: str, ts: float) -> None:
    first = events.alert_id(device_id=device_id, rule_id=rule_id, severity=severity, reading_ts=ts)
    assert first == events.alert_id(device_id=device_id, rule_id=rule_id, severity=severity, reading_ts=ts)
    other = "critical" if severity == "warning" else "warning"
    assert first != events.alert_id(device_id=device_id, rule_id=rule_id, severity=other, reading_ts=ts)
    assert first != events.alert_id(
        device_id=device_id + "x", rule_id=rule_id, severity=severity, reading_ts=ts
    )


@given(
    device_ids,
    st.text(min_size=1),
    st.sampled_from(events.SEVERITIES),
    finite,
    st.sampled_from((*typing.get_args(events.KindCondition), "above", "below")),
)
def test_a_new_alerts_id_is_alert_id_of_its_fields(
    device_id: str, rule_id: str, severity: Severity, ts: float, condition: events.Condition
) -> None:
    """new_alert builds the id's text itself: it must stay the id every store and replay compares."""
    alert = events.new_alert(
        device_id=device_id,
        metric="temperature",
        rule_id=rule_id,
        severity=severity,
        condition=condition,
        threshold=1.0,
        value=2.0,
        reading_ts=ts,
        detected_at=3.0,
    )
    assert alert.alert_id == events.alert_id(
        device_id=device_id, rule_id=rule_id, severity=severity, reading_ts=ts, condition=condition
    )
    if condition == "above":  # the threshold id of old: four parts, no kind
        assert alert.alert_id == events.stable_id(device_id, rule_id, severity, repr(ts))


@given(
    st.builds(
        DeadLetter,
        error=st.text(),
        stage=st.sampled_from(["ingest", "processors", "alerts"]),
        source=st.text(),
        failed_at=finite,
    )
)
def test_dead_letter_headers_round_trip(letter: DeadLetter) -> None:
    headers = events.dead_letter_headers(letter)
    assert all(isinstance(value, bytes) for _, value in headers)
    assert events.parse_dead_letter_headers(headers) == letter


def test_dead_letter_headers_missing_are_named() -> None:
    with pytest.raises(EventDecodeError, match="stage, source"):
        events.parse_dead_letter_headers([("error", b"x"), ("failed_at", b"1.0")])


def test_kafka_source() -> None:
    assert (
        events.kafka_source(topic="telemetry.readings", partition=3, offset=42) == "telemetry.readings/3/42"
    )


def test_stored_ids_keep_their_values() -> None:
    # Alert, incident and notification ids are stored and compared across processes and
    # versions: these values were computed before they shared `stable_id`, and must not move.
    from thermoflow.alerts.lifecycle import incident_id
    from thermoflow.alerts.notification import idempotency_key
    from thermoflow.events import alert_id

    ts = 1764000000.125
    assert (
        alert_id(device_id="freezer-0001", rule_id="freezer-too-warm", severity="critical", reading_ts=ts)
        == "4891007f389e2aa1efe7908827e2816e"
    )
    assert (
        incident_id(device_id="freezer-0001", rule_id="freezer-too-warm", opened_at=ts)
        == "b2e22430f5d07b9f413f4c47"
    )
    assert (
        idempotency_key(incident_id="abc", transition="resolve", seq=3) == "059b4439776da76a80e649948170ae3d"
    )


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400", b'"nan"'])
def test_the_one_call_decode_refuses_what_decode_reading_refuses_as_not_finite(number: bytes) -> None:
    """decode_readings skips Reading's finiteness check: JSON must not be able to carry such a number."""
    value = b'{"device_id": "a", "value": %s, "ts": 1.0, "received_at": 2.0}' % number
    with pytest.raises(EventDecodeError):
        events.decode_reading(value)
    assert events.decode_readings([value]) is None
    ok = b'{"device_id": "a", "value": 1e308, "ts": 1.0, "received_at": 2.0}'
    assert [r.value for r in events.decode_readings([ok, ok]) or []] == [1e308, 1e308]


#: An unknown field nested deeper than the interpreter's stack lets msgspec go: RecursionError.
DEEP = (
    b'{"device_id": "a", "value": 1.5, "ts": 1.0, "received_at": 2.0, "x": '
    + b"[" * 5000
    + b"]" * 5000
    + b"}"
)


@pytest.mark.parametrize(
    ("decode", "what"),
    [
        (events.decode_reading, "reading"),
        (events.decode_alert, "alert event"),
        (events.decode_watermark, "watermark"),
        (events.decode_clear, "clear"),
        (events.decode_ack, "ack"),
    ],
)
@pytest.mark.parametrize("payload", [DEEP, b"[" * 100_000 + b"]" * 100_000, b"[" * 100_000])
def test_nesting_deeper_than_the_stack_is_a_decode_error_not_a_crash(
    decode: typing.Callable[[bytes], object], what: str, payload: bytes
) -> None:
    """A consumer dead-letters such a record (any producer can write to a topic); a RecursionError
    would end it, and its restart would read the same record again."""
    with pytest.raises(EventDecodeError, match=f"^invalid {what}: "):
        decode(payload)
    assert events.decode_readings([DEEP, payload]) is None
