"""Hostile payloads against the pure codec and translator: every one ends as valid readings or one
dead letter with a reason, never another exception, and every record fits in Kafka."""

from __future__ import annotations

import hashlib
import math
import random

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.hostile import LIMITS, Case, catalogue, fuzz_payloads, payloads
from thermoflow import topics
from thermoflow.events import Reading, decode_reading, parse_dead_letter_headers
from thermoflow.ingest.codecs import PayloadError, PayloadLimits, decode_payload
from thermoflow.ingest.mapping import TopicFields, TopicTemplate
from thermoflow.ingest.records import DEADLETTER_MAX_BYTES, Translator

NOW = 1_796_000_000.0
FIELDS = TopicFields(device_id="freezer-0042", metric="temperature")
TEMPLATE = TopicTemplate("sensors/{device_id}/{metric}")
KAFKA_RECORD_MAX = 1_000_000  # under the producer's max_request_size and the broker's message.max.bytes


def translator(**overrides: object) -> Translator:
    return Translator(TEMPLATE, readings_topic="r", deadletter_topic="d", **overrides)  # type: ignore[arg-type]


def assert_storable(reading: Reading, received_at: float, limits: PayloadLimits = LIMITS) -> None:
    """What the sink and the alert store rely on (defect 3)."""
    for text in (reading.device_id, reading.metric):
        assert 0 < len(text) <= 256 and text.isprintable() and "\ufffd" not in text
        text.encode("utf-8")  # no lone surrogate
    assert math.isfinite(reading.value) and math.isfinite(reading.ts)
    assert received_at - limits.max_age <= reading.ts <= received_at + limits.max_ahead
    assert reading.seq is None or -(2**63) <= reading.seq < 2**63


CASES = catalogue(NOW)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_catalogue_case_through_the_translator(case: Case) -> None:
    topic = f"sensors/{case.device or 'freezer-0042'}/temperature"
    out = translator().translate(topic, case.payload, received_at=NOW)
    if case.readings:
        assert out.error is None, out.error
        assert len(out.records) == case.readings
        for record in out.records:
            assert_storable(decode_reading(record.value), NOW)
        return
    assert out.error is not None and case.words in out.error, out.error
    [letter] = out.records
    assert letter.topic == "d"
    assert parse_dead_letter_headers(letter.headers).error.startswith(out.error[:900])
    assert len(letter.value) + sum(len(k) + len(v) for k, v in letter.headers) < KAFKA_RECORD_MAX


def test_int_too_large_for_a_float_is_a_dead_letter_not_an_overflow() -> None:
    # Defect 1: the 401-digit number raised OverflowError out of the codec (and froze the acks).
    with pytest.raises(PayloadError, match="too large for a number"):
        decode_payload(b"1" + b"0" * 400, fields=FIELDS, received_at=NOW)


def test_deep_nesting_is_a_dead_letter_not_a_recursion_error() -> None:
    # Defect 1: RecursionError from 30,000 nested arrays.
    with pytest.raises(PayloadError, match="nesting is deeper than 32 levels"):
        decode_payload(b"[" * 30_000 + b"]" * 30_000, fields=FIELDS, received_at=NOW)


def test_a_codec_bug_costs_one_message_a_dead_letter_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> list[Reading]:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr("thermoflow.ingest.records.decode_payload", broken)
    out = translator().translate("sensors/f-1/temperature", b"1", received_at=NOW)
    assert out.error == "internal error decoding payload: OverflowError: int too large to convert to float"
    [letter] = out.records
    assert (letter.topic, letter.value) == ("d", b"1")


@pytest.mark.parametrize("size", [10_000_000, DEADLETTER_MAX_BYTES + 1])
def test_an_oversized_payload_is_dead_lettered_cut_with_its_size_and_hash(size: int) -> None:
    # Defect 2: the dead letter carried all 10 MB and Kafka refused it, forever.
    payload = random.Random(size).randbytes(size)
    out = translator().translate("sensors/f-1/temperature", payload, received_at=NOW)
    [letter] = out.records
    assert letter.value == payload[:DEADLETTER_MAX_BYTES]
    headers = dict(letter.headers)
    assert headers[topics.HEADER_TRUNCATED] == b"true"
    assert headers[topics.HEADER_ORIGINAL_SIZE] == str(size).encode()
    assert headers[topics.HEADER_ORIGINAL_SHA256] == hashlib.sha256(payload).hexdigest().encode()
    assert f"payload of {size} bytes exceeds the limit of 65536" in out.error  # type: ignore[operator]


def test_a_dead_letter_within_the_cut_keeps_its_bytes_unchanged() -> None:
    payload = b"x" * DEADLETTER_MAX_BYTES  # over the payload limit, and kept whole
    [letter] = translator().translate("sensors/f-1/temperature", payload, received_at=NOW).records
    assert letter.value == payload and topics.HEADER_TRUNCATED not in dict(letter.headers)


def test_the_dead_letter_cut_is_a_setting() -> None:
    payload = b"x" * 5000
    [letter] = translator(deadletter_max_bytes=1024).translate("a/b/c", payload, received_at=NOW).records
    assert letter.value == payload[:1024]


def test_a_huge_topic_and_reason_keep_the_headers_small() -> None:
    topic = "sensors/" + "t" * 60_000 + "/temperature"
    out = translator().translate(topic, b"\x00" * 60_000, received_at=NOW)
    [letter] = out.records
    assert sum(len(v) for _, v in letter.headers) < 5_000
    assert "longer than 1024" in parse_dead_letter_headers(letter.headers).error


@pytest.mark.parametrize(
    ("payload", "fields", "words"),
    [
        (b'{"value": 1.5, "ts": 1e19}', FIELDS, "`ts` 10000000000000.0 is 3.17e+05 years ahead"),
        (
            b'{"value": 1, "seq": 9223372036854775808}',
            FIELDS,
            "`seq` 9223372036854775808 is outside the int64",
        ),
        (b'{"value": 1, "device_id": "a\\u0000b"}', None, "device id 'a\\x00b' contains U+0000"),
        (b'{"value": 1, "device_id": "x", "metric": "t\\u0007"}', None, "metric 't\\x07' contains U+0007"),
        (b'{"value": 1, "device_id": 7}', None, "device id must be a string, got int"),
        (
            b'[{"bn": "d\\u001b/", "n": "t", "v": 1}]',
            None,
            "SenML record 0: device id 'd\\x1b' contains U+001B",
        ),
        (b'{"value": 1e308, "unit": "F"}', FIELDS, "`value` is not a finite number in °C"),
        (b'{"value": 1, "ts": 1764218400}', FIELDS, "`ts` 1764218400.0 is 368 days before the receive time"),
        (b'{"value": 1, "ts": 1796000601}', FIELDS, "`ts` 1796000601.0 is 601 s ahead"),
    ],
)
def test_what_downstream_cannot_store_is_refused_naming_the_field(
    payload: bytes, fields: TopicFields | None, words: str
) -> None:
    # Defect 3: these reached the sink and the alert store, which retried or crash-looped.
    with pytest.raises(PayloadError) as caught:
        decode_payload(payload, fields=fields, received_at=NOW)
    assert words in str(caught.value)


def test_the_timestamp_window_edges_are_included() -> None:
    limits = PayloadLimits(max_age=100.0, max_ahead=10.0)
    for ts in (NOW - 100.0, NOW + 10.0):
        [reading] = decode_payload(b'{"value":1,"ts":%r}' % ts, fields=FIELDS, received_at=NOW, limits=limits)
        assert reading.ts == ts
    for ts in (NOW - 100.5, NOW + 10.5):
        with pytest.raises(PayloadError, match="`ts`"):
            decode_payload(b'{"value":1,"ts":%r}' % ts, fields=FIELDS, received_at=NOW, limits=limits)


def test_senml_record_count_and_depth_limits_are_settings() -> None:
    pack = b"[" + b",".join([b'{"v":1}'] * 5) + b"]"
    assert len(decode_payload(pack, fields=FIELDS, received_at=NOW, limits=PayloadLimits(max_records=5))) == 5
    with pytest.raises(PayloadError, match="SenML pack has 6 records, more than the limit of 5"):
        decode_payload(
            pack[:-1] + b',{"v":1}]', fields=FIELDS, received_at=NOW, limits=PayloadLimits(max_records=5)
        )
    with pytest.raises(PayloadError, match="deeper than 2 levels"):
        decode_payload(
            b'{"value":1,"x":[[]]}', fields=FIELDS, received_at=NOW, limits=PayloadLimits(max_depth=2)
        )


# -- properties ----------------------------------------------------------------------------------

devices = st.one_of(st.just("freezer-1"), st.text(min_size=1, max_size=300), st.none())


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(payload=payloads, device=devices, received_at=st.floats(min_value=0, max_value=4e9))
def test_decode_returns_storable_readings_or_raises_payload_error_only(
    payload: bytes, device: str | None, received_at: float
) -> None:
    fields = TopicFields(device_id=device, metric="temperature") if device else None
    try:
        readings = decode_payload(payload, fields=fields, received_at=received_at)
    except PayloadError as exc:
        reason = str(exc)
        assert reason  # a dead letter's reason is never empty
        return
    assert readings
    for reading in readings:
        assert_storable(reading, received_at)
        assert decode_reading(msgspec.json.encode(reading)) == reading


@settings(max_examples=500, deadline=None)
@given(topic=st.text(max_size=80), payload=payloads)
def test_translate_never_raises_and_every_record_fits(topic: str, payload: bytes) -> None:
    out = translator().translate(topic, payload, received_at=NOW)
    assert out.records
    for record in out.records:
        assert len(record.value) + sum(len(k) + len(v) for k, v in record.headers) < KAFKA_RECORD_MAX
    assert (out.error is None) == all(record.topic == "r" for record in out.records)


def test_the_fuzzer_payloads_never_raise_anything_but_payload_error() -> None:
    rng = random.Random(11)
    produced = 0
    for _, payload in zip(range(20_000), fuzz_payloads(rng, NOW, CASES), strict=False):
        try:
            readings = decode_payload(payload, fields=FIELDS, received_at=NOW)
        except PayloadError:
            continue
        produced += len(readings)
        for reading in readings:
            assert_storable(reading, NOW)
    assert produced > 5_000  # the fuzzer makes plenty of valid readings too


def test_the_bridge_callback_turns_any_translation_failure_into_a_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even if translating itself broke, the message gets a dead letter, so its ack is not held back."""
    from thermoflow.ingest.bridge import Bridge
    from thermoflow.ingest.settings import IngestSettings

    bridge = Bridge(IngestSettings(), wall_clock=lambda: NOW)

    def broken(*_: object, **__: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(bridge._translator, "_translate", broken)
    bridge._on_publish("sensors/f-1/temperature", b"[[[", 7, 1)
    [(record, pending)] = bridge._outbox
    assert record.topic == bridge.settings.deadletter_topic and record.value == b"[[["
    error = parse_dead_letter_headers(record.headers).error
    assert error == "internal error translating message: RecursionError"
    assert (pending.mid, pending.records) == (7, 1)


def test_a_bug_in_the_plain_fast_path_becomes_the_messages_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bridge's fast path (Translator.plain) never raises: the general path decides and says why."""
    from thermoflow.ingest.bridge import Bridge
    from thermoflow.ingest.settings import IngestSettings

    bridge = Bridge(IngestSettings(), wall_clock=lambda: NOW)
    bridge._on_publish("sensors/f-1/temperature", b'{"value": 1.0}', 1, 1)  # the topic is known now

    def broken(*_: object, **__: object) -> None:
        raise ZeroDivisionError("a codec's bug")

    monkeypatch.setattr("thermoflow.ingest.records.plain_wire", broken)
    monkeypatch.setattr("thermoflow.ingest.records.decode_payload", broken)
    bridge._on_publish("sensors/f-1/temperature", b'{"value": 2.0}', 2, 1)
    [(reading, _), (letter, pending)] = bridge._outbox
    assert (reading.topic, letter.topic) == (bridge.settings.readings_topic, bridge.settings.deadletter_topic)
    error = parse_dead_letter_headers(letter.headers).error
    assert error == "internal error decoding payload: ZeroDivisionError: a codec's bug"
    assert (letter.value, pending.mid, pending.records) == (b'{"value": 2.0}', 2, 1)
