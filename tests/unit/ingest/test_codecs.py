"""Every payload codec and validation case of the bridge, without services."""

from __future__ import annotations

import doctest
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import thermoflow.ingest.codecs
import thermoflow.ingest.mapping
import thermoflow.ingest.records
import thermoflow.ingest.rows
from thermoflow.events import Reading, decode_reading, encode
from thermoflow.ingest.codecs import (
    PayloadError,
    PayloadLimits,
    decode_payload,
    parse_timestamp,
    plain_record,
    to_celsius,
)
from thermoflow.ingest.mapping import TopicFields

FIELDS = TopicFields(device_id="freezer-0042", metric="temperature")
NOW = 1764218400.0
LIMITS = PayloadLimits()


def one(
    payload: bytes, fields: TopicFields | None = FIELDS, max_bytes: int = 100
) -> tuple[str, str, float, float, int | None]:
    readings = decode_payload(
        payload, fields=fields, received_at=NOW, limits=PayloadLimits(max_bytes=max_bytes)
    )
    assert len(readings) == 1
    r = readings[0]
    assert r.received_at == NOW and r.unit == "C"
    return (r.device_id, r.metric, r.value, r.ts, r.seq)


def reason(payload: bytes, fields: TopicFields | None = FIELDS, max_bytes: int = 65_536) -> str:
    with pytest.raises(PayloadError) as caught:
        decode_payload(payload, fields=fields, received_at=NOW, limits=PayloadLimits(max_bytes=max_bytes))
    return str(caught.value)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"value": 21.5, "ts": 1764218000.25, "seq": 7, "unit": "C"}', 21.5),
        (b'{"temperature": 21.5, "ts": 1764218000.25, "seq": 7}', 21.5),
        (b'{"temp": 21.5, "ts": 1764218000.25, "seq": 7}', 21.5),
        (b'{"temp": 70.7, "ts": 1764218000.25, "seq": 7, "unit": "F"}', (70.7 - 32) * 5 / 9),
        (b'{"value": 294.65, "ts": 1764218000.25, "seq": 7, "unit": "K"}', 294.65 - 273.15),
    ],
)
def test_json_object_with_any_value_key_and_unit(payload: bytes, expected: float) -> None:
    device_id, metric, value, ts, seq = one(payload)
    assert (device_id, metric, ts, seq) == ("freezer-0042", "temperature", 1764218000.25, 7)
    assert value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("raw_ts", "expected"),
    [
        (b"1764218000.25", 1764218000.25),  # epoch seconds
        (b"1764218000250", 1764218000.25),  # epoch milliseconds
        (b'"2025-11-27T04:33:20.25Z"', 1764218000.25),  # RFC 3339, UTC
        (b'"2025-11-27T05:33:20.25+01:00"', 1764218000.25),  # RFC 3339, with an offset
    ],
)
def test_timestamps_in_seconds_milliseconds_and_rfc3339(raw_ts: bytes, expected: float) -> None:
    assert one(b'{"value": 1.0, "ts": ' + raw_ts + b"}")[3] == pytest.approx(expected, abs=1e-6)


def test_missing_timestamp_is_the_receive_time() -> None:
    assert one(b'{"value": 1.0}')[3] == NOW


@pytest.mark.parametrize("payload", [b"21.5", b"-18", b" 21.5\n", b"+21.5", b"2.15e1"])
def test_bare_number(payload: bytes) -> None:
    assert one(payload) == ("freezer-0042", "temperature", 21.5 if b"18" not in payload else -18.0, NOW, None)


def test_senml_resolves_base_name_time_unit_and_value() -> None:
    pack = (
        b'[{"bn": "freezer-0042/", "bt": 1764218000, "bu": "Cel", "bv": 0.5, "n": "temperature", "v": -18.0},'
        b' {"n": "temperature", "t": 10, "v": 32.0, "u": "degF"},'
        b' {"n": "temperature", "t": 20, "v": 255.15, "u": "K"}]'
    )
    readings = decode_payload(pack, fields=None, received_at=NOW)
    assert [(r.device_id, r.metric, r.ts) for r in readings] == [
        ("freezer-0042", "temperature", 1764218000.0),
        ("freezer-0042", "temperature", 1764218010.0),
        ("freezer-0042", "temperature", 1764218020.0),
    ]
    assert [r.value for r in readings] == pytest.approx([-17.5, (32.5 - 32) * 5 / 9, 255.65 - 273.15])


def test_senml_as_the_simulator_sends_it_and_relative_time() -> None:
    # The topic names the device; a time below 2**28 is relative to now (RFC 8428 4.5.3).
    readings = decode_payload(
        b'[{"n":"temperature","u":"Cel","v":4.5,"t":-2.0}]', fields=FIELDS, received_at=NOW
    )
    assert [(r.device_id, r.metric, r.value, r.ts) for r in readings] == [
        ("freezer-0042", "temperature", 4.5, NOW - 2.0)
    ]


def test_device_id_from_payload_when_the_topic_has_none() -> None:
    assert one(b'{"device_id": "rack-7", "value": 3.0}', fields=None)[0] == "rack-7"


@pytest.mark.parametrize(
    ("payload", "fields", "words"),
    [
        (b'{"value": 1.0}', None, "no device id"),
        (b'[{"n": "temperature", "v": 1.0}]', None, "no device id"),
        (b'{"value": 1.0, "unit": "bananas"}', FIELDS, "unknown unit 'bananas'"),
        (b'[{"n": "t", "v": 1.0, "u": "%RH"}]', FIELDS, "unknown unit '%RH'"),
        (b"nan", FIELDS, "not a finite number"),
        (b"inf", FIELDS, "not a finite number"),
        (b'{"value": 1e999}', FIELDS, "not valid JSON: Number out of range"),
        (b"\xff\xfe\x00", FIELDS, "not valid UTF-8"),
        (b"{not json", FIELDS, "not valid JSON"),
        (b"hot", FIELDS, "neither JSON nor a number"),
        (b'{"value": "21.5"}', FIELDS, "`value` must be a number, got str"),
        (b'{"value": true}', FIELDS, "`value` must be a number, got bool"),
        (b'{"reading": 21.5}', FIELDS, "no `value`"),
        (b'{"value": 1.0, "seq": "x"}', FIELDS, "`seq` must be an integer"),
        (b'{"value": 1.0, "ts": "yesterday"}', FIELDS, "neither epoch seconds nor RFC 3339"),
        (b'{"value": 1.0, "ts": "2025-11-27T04:33:20"}', FIELDS, "no time zone"),
        (b'{"value": 1.0, "ts": -5}', FIELDS, "non-negative"),
        (b'"21.5"', FIELDS, "JSON str"),
        (b"[]", FIELDS, "SenML pack is empty"),
        (b'[{"n": "t", "vs": "on"}]', FIELDS, "no numeric value"),
        (b"[1, 2]", FIELDS, "SenML record 0 is a int"),
    ],
)
def test_invalid_payloads_have_a_reason(payload: bytes, fields: TopicFields | None, words: str) -> None:
    assert words in reason(payload, fields)


def test_payload_over_the_size_limit_is_refused_unparsed() -> None:
    assert reason(b"1" * 101, max_bytes=100) == "payload of 101 bytes exceeds the limit of 100"
    assert one(b"1" * 100, fields=FIELDS)[2] == float("1" * 100)  # at the limit: parsed


def test_device_id_longer_than_the_contract_allows() -> None:
    assert "longer than 256" in reason(b'{"value": 1}', TopicFields(device_id="x" * 257, metric="t"))


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_unit_conversions_agree_with_each_other(celsius: float) -> None:
    fahrenheit = celsius * 9 / 5 + 32
    kelvin = celsius + 273.15
    assert to_celsius(fahrenheit, "°F") == pytest.approx(celsius, abs=1e-6)
    assert to_celsius(kelvin, "kelvin") == pytest.approx(celsius, abs=1e-6)
    assert to_celsius(celsius, "Cel") == celsius


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_epoch_seconds_and_milliseconds_mean_the_same_moment(seconds: float) -> None:
    if seconds > 1e9:  # recent enough that milliseconds are unambiguous
        assert parse_timestamp(seconds * 1000) == pytest.approx(seconds)
    assert parse_timestamp(seconds) == seconds
    assert math.isfinite(parse_timestamp(seconds))


@pytest.mark.parametrize(
    "module",
    [
        thermoflow.ingest.codecs,
        thermoflow.ingest.mapping,
        thermoflow.ingest.records,
        thermoflow.ingest.rows,
    ],
)
def test_docstring_examples(module: object) -> None:
    failures, _ = doctest.testmod(module, raise_on_error=False)  # type: ignore[arg-type]
    assert failures == 0


def _outcome(payload: bytes, fields: TopicFields, *, plain: bool = True) -> object:
    try:
        return decode_payload(payload, fields=fields, received_at=NOW, plain=plain)
    except PayloadError as exc:
        return f"PayloadError: {exc}"


_any_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.sampled_from(["C", "F", "K", "degF", "x", "", "2025-11-27T04:40:00Z", "2025-11-27T04:40:00"]),
    st.just({"v": 1}),
    st.just([1]),
)


#: Payload objects near a plain reading: its keys and others, in-range and hostile values.
_documents = st.dictionaries(
    st.sampled_from(["value", "ts", "seq", "unit", "u", "temp", "device_id", "timestamp"]),
    st.one_of(
        _any_value,
        st.floats(min_value=NOW - 8 * 86_400, max_value=NOW + 700),
        st.floats(min_value=-1e3, max_value=1e3),
        st.floats(min_value=1e11, max_value=1e17),  # timestamps in ms, µs
    ),
)


@given(
    _documents,
    st.sampled_from([FIELDS, TopicFields(device_id="freezer-0042", metric=None)]),
)
def test_the_fast_path_of_plain_payloads_decides_as_the_general_path(
    document: dict[str, object], fields: TopicFields
) -> None:
    """A plain object takes a typed fast path; the same bytes after a space take the general one."""
    import json

    payload = json.dumps(document).encode()
    assert _outcome(payload, fields) == _outcome(b" " + payload, fields)
    # The bridge's Translator skips the fast path it already tried: the same decision without it.
    assert _outcome(payload, fields) == _outcome(payload, fields, plain=False)


@given(
    _documents,
    st.sampled_from(["temperature", "humidity"]),
)
def test_the_bridges_plain_record_is_the_general_paths_reading_encoded_or_nothing(
    document: dict[str, object], metric: str
) -> None:
    """plain_record may decline a payload (the general path then decides), never differ from it."""
    import json

    payload = json.dumps(document).encode()
    fields = TopicFields(device_id="freezer-0042", metric=metric)
    record = plain_record(payload, device_id="freezer-0042", metric=metric, received_at=NOW, limits=LIMITS)
    if record is not None:
        readings = decode_payload(payload, fields=fields, received_at=NOW)
        assert [record] == [encode(reading) for reading in readings]


@given(_documents, st.sampled_from([None, b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"]))
def test_the_translators_plain_record_is_its_translation_or_nothing(
    document: dict[str, object], traceparent: bytes | None
) -> None:
    """The bridge calls Translator.plain, then general() for what it declines: translate()'s result."""
    import json

    from thermoflow.ingest.mapping import TopicTemplate
    from thermoflow.ingest.records import Translator

    translator = Translator(TopicTemplate("s/{device_id}/{metric}"), readings_topic="r", deadletter_topic="d")
    topic, payload = "s/freezer-0042/temperature", json.dumps(document).encode()
    assert translator.plain(topic, b'{"value": 1.0}', received_at=NOW) is None  # a topic not seen yet
    translator.translate(topic, b"1.0", received_at=NOW)
    record = translator.plain(topic, payload, received_at=NOW, traceparent=traceparent)
    out = translator.translate(topic, payload, received_at=NOW, traceparent=traceparent)
    assert record is None or (out.records == [record] and out.error is None)
    assert translator.general(topic, payload, received_at=NOW, traceparent=traceparent) == out


def test_plain_record_takes_the_payload_nearly_every_device_sends() -> None:
    payload = b'{"value": 41.0, "ts": %r, "seq": 12, "unit": "F"}' % (NOW - 5.0)
    record = plain_record(payload, device_id="f-1", metric="temperature", received_at=NOW, limits=LIMITS)
    assert record == encode(decode_payload(payload, fields=TopicFields("f-1", None), received_at=NOW)[0])
    assert decode_reading(record or b"") == Reading(
        device_id="f-1", value=5.0, ts=NOW - 5.0, seq=12, received_at=NOW
    )


def test_the_encoding_only_reading_has_the_contracts_fields_in_its_order() -> None:
    from thermoflow.ingest.codecs import _Wire

    assert _Wire.__struct_fields__ == Reading.__struct_fields__


@pytest.mark.parametrize(
    "payload",
    [
        b'{"value": 1.0, "ts": %r}' % (NOW + 601),  # ahead of the window
        b'{"value": 1.0, "ts": %r}' % (NOW - 8 * 86_400),  # behind it
        b'{"value": 1.0, "ts": %d}' % int(NOW * 1000),  # milliseconds: the general path converts them
        b'{"value": 1.0, "seq": 9223372036854775808}',  # beyond int64
        b'{"value": 1e999}',  # not finite
        b'{"value": 1.0, "unit": "parsec"}',
        b'{"value": "1.0"}',
        b'{"value": 1.0, "ts": -1.0}',
        b'{"value": 1.0, "extra": 1}',
        b'{"value": 1.0' + b" " * 65_536 + b"}",  # over the size limit: refused unparsed
    ],
)
def test_plain_record_leaves_every_doubtful_payload_to_the_general_path(payload: bytes) -> None:
    record = plain_record(payload, device_id="f-1", metric="temperature", received_at=NOW, limits=LIMITS)
    assert record is None
