"""W3C trace context: parsing hostile headers, new traces, the hops' headers and the sampled spans."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from tests.support.fakes import FakeClock, RecordingChannel, RecordingDeadLetters, make_alert
from thermoflow import tracing
from thermoflow.alerts.delivery import Dispatcher, RetryPolicy
from thermoflow.alerts.lifecycle import Policy
from thermoflow.alerts.notification import Notification
from thermoflow.alerts.routing import LogRoute, Routes
from thermoflow.alerts.tracker import IncidentTracker
from thermoflow.ingest.mapping import TopicTemplate
from thermoflow.ingest.records import Translator
from thermoflow.processors.app import BatchRunner
from thermoflow.processors.columns import decode_batch
from thermoflow.processors.runtime import Emit, FunctionSpec
from thermoflow.processors.settings import ProcessorSettings
from thermoflow.tracing import TraceContext, TraceSource, format_traceparent, parse

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans go to memory for the test (tracing is off again after it)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


# -- parse / format --------------------------------------------------------------------------


def test_a_valid_traceparent_parses_and_formats_back_unchanged() -> None:
    context = parse(VALID)
    assert context == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert format_traceparent(context) == VALID
    assert parse(VALID.replace(b"-01", b"-00")) == context._replace(sampled=False)


@pytest.mark.parametrize(
    "hostile",
    [
        None,
        b"",
        b"00",
        VALID[:-1],  # one character short
        VALID + b"0",  # one too many for version 00
        VALID + b"-extra",  # version 00 has no further fields
        VALID.replace(b"4bf9", b"4BF9"),  # upper case is not valid
        VALID.replace(b"4bf9", b"4bg9"),  # not hex
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is forbidden
        b"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
        b" " + VALID,
        b"\xff\xfe" + VALID[2:],  # not ASCII
        "00-4bf92f3577b34da6a3ce929d0e0e47٣٦-00f067aa0ba902b7-01".encode(),  # Arabic-Indic digits
        VALID * 20_000,  # about a megabyte
    ],
)
def test_a_hostile_or_missing_traceparent_is_none_never_an_exception(hostile: bytes | None) -> None:
    assert parse(hostile) is None
    assert tracing.trace_id_of(hostile) is None


def test_a_future_version_is_read_for_its_known_fields() -> None:
    future = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-comes-next"
    assert parse(future) == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)


@given(st.binary(max_size=200))
def test_parse_never_raises_on_any_bytes(value: bytes) -> None:
    context = parse(value)
    assert context is None or format_traceparent(context)[3:52] == value[3:52]


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.booleans())
def test_every_valid_context_round_trips(trace_id: int, span_id: int, sampled: bool) -> None:
    context = TraceContext(f"{trace_id:032x}", f"{span_id:016x}", sampled)
    assert parse(format_traceparent(context)) == context


def test_header_of_finds_the_traceparent_among_a_records_headers() -> None:
    assert tracing.header_of([("mqtt-topic", b"t"), ("traceparent", VALID)]) == VALID
    assert tracing.header_of([("mqtt-topic", b"t")]) is None
    assert tracing.header_of(None) is None


# -- new traces ------------------------------------------------------------------------------


def test_new_traces_are_valid_distinct_and_unsampled_at_ratio_zero() -> None:
    source = TraceSource(ratio=0.0)
    contexts = [parse(source.new()) for _ in range(10_000)]
    assert all(c is not None and not c.sampled for c in contexts)
    assert len({c.trace_id for c in contexts if c is not None}) == 10_000
    assert all(parse(TraceSource(ratio=1.0).new()).sampled for _ in range(100))  # type: ignore[union-attr]


def test_new_traces_of_two_processes_do_not_collide() -> None:
    first, second = TraceSource(ratio=0.0), TraceSource(ratio=0.0)
    assert {first.new()[3:35] for _ in range(1000)}.isdisjoint({second.new()[3:35] for _ in range(1000)})


def test_the_sampled_share_is_the_ratio_and_not_every_nth_message() -> None:
    source = TraceSource(ratio=0.01, rng=random.Random(7))
    flags = [source.sample() for _ in range(200_000)]
    assert 1_700 <= sum(flags) <= 2_300
    sampled_at = [i for i, flag in enumerate(flags) if flag]
    gaps = {b - a for a, b in itertools.pairwise(sampled_at)}
    assert len(gaps) > 50  # random gaps: a fleet publishing in a fixed order is not sampled by device


def test_a_ratio_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        TraceSource(ratio=1.5)


# -- spans -----------------------------------------------------------------------------------


def test_spans_start_only_for_sampled_valid_parents_and_continue_their_trace(
    spans: InMemorySpanExporter,
) -> None:
    active = tracing.tracing()
    assert active.start("x", VALID.replace(b"-01", b"-00")) is None
    assert active.start("x", b"garbage") is None
    assert active.start("x", None) is None
    span = active.start("processors.thresholds", VALID)
    assert span is not None
    child = parse(tracing.traceparent_of(span))
    span.end()
    assert child is not None and child.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and child.sampled
    [finished] = spans.get_finished_spans()
    assert finished.parent is not None and f"{finished.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert f"{finished.context.span_id:016x}" == child.span_id


def test_a_messages_span_attributes_are_built_for_its_span_only(spans: InMemorySpanExporter) -> None:
    """The bridge passes a function: an unsampled message (nearly every one) never calls it."""
    built: list[str] = []

    def attributes() -> dict[str, str]:
        built.append("built")
        return {"messaging.mqtt.topic": "s/f-1/temperature"}

    assert parse(tracing.MessageTraces(ratio=0.0, service="bridge").begin(object(), attributes=attributes))
    assert built == []
    traces, message = tracing.MessageTraces(ratio=1.0, service="bridge"), object()
    traceparent = traces.begin(message, attributes=attributes)
    traces.end([message], acked=True)
    [span] = spans.get_finished_spans()
    assert built == ["built"] and span.attributes == {
        "messaging.mqtt.topic": "s/f-1/temperature", "thermoflow.acked": True, "thermoflow.records": 0,
    }  # fmt: skip
    assert parse(traceparent).span_id == f"{span.context.span_id:016x}"  # type: ignore[union-attr]


def test_without_an_exporter_tracing_is_off_and_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setattr(tracing, "_configured", False)
    try:
        off = tracing.configure("test")
        assert not off.enabled
        assert off.start("x", VALID) is None and off.root("x") is None
    finally:
        tracing.install(None)


# -- the hops' headers -----------------------------------------------------------------------


def test_every_reading_of_a_message_carries_its_traceparent_and_so_does_a_dead_letter() -> None:
    translator = Translator(TopicTemplate("s/{device_id}/{metric}"), readings_topic="r", deadletter_topic="d")
    payload = b'[{"v": 1.0, "t": 1700000000.0, "u": "Cel"}, {"v": 2.0, "t": 1700000001.0, "u": "Cel"}]'
    records = translator.translate("s/f-1/temperature", payload, received_at=1700000002.0, traceparent=VALID)
    assert records.error is None and len(records.records) == 2
    assert all(tracing.header_of(r.headers) == VALID for r in records.records)
    assert all(dict(r.headers)["mqtt-topic"] == b"s/f-1/temperature" for r in records.records)
    letter = translator.translate("s/f-1/temperature", b"hot", received_at=1.0, traceparent=VALID)
    assert letter.error is not None and tracing.header_of(letter.records[0].headers) == VALID
    # The cached per-topic headers are not changed by a message's traceparent.
    plain = translator.translate("s/f-1/temperature", b"3.0", received_at=1700000002.0)
    assert tracing.header_of(plain.records[0].headers) is None


@dataclass(frozen=True)
class _Record:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes], ...] = ()


def _runner() -> BatchRunner:
    spec = FunctionSpec("thresholds", "readings", "alerts", lambda settings: lambda batch: [])
    return BatchRunner(
        spec=spec,
        body=lambda batch: [],
        sink=None,
        deadletter=None,
        settings=ProcessorSettings(),
        metrics=None,  # type: ignore[arg-type]
    )


def _reading(partition: int, offset: int, traceparent: bytes | None) -> _Record:
    value = b'{"device_id": "f-%d", "value": 1.0, "ts": 10.0, "received_at": 10.0}' % offset
    headers = (("traceparent", traceparent),) if traceparent is not None else ()
    return _Record(b"f", value, partition, offset, headers)


def test_an_alert_carries_the_traceparent_of_the_reading_that_triggered_it(
    spans: InMemorySpanExporter,
) -> None:
    unsampled = VALID.replace(b"-01", b"-00")
    other = b"00-11111111111111111111111111111111-2222222222222222-00"
    records = [_reading(0, 5, other), _reading(3, 5, unsampled), _reading(3, 6, VALID), _reading(1, 9, b"xx")]
    batch, rejects = decode_batch("readings", records)
    assert not rejects
    event = make_alert("f-1", 10.0)
    emits = [
        Emit(key="a", event=event, partition=3, offset=5),  # same offset as a reading of partition 0
        Emit(key="b", event=event, partition=3, offset=6),  # sampled: a span, and the span's id
        Emit(key="c", event=event, partition=1, offset=9),  # a hostile header: a new trace
        Emit(key="d", event=event),  # no reading (a timer's): a new trace
    ]
    traced, started = _runner().traced(emits, batch, started_ns=0)
    headers = [tracing.header_of(emit.headers) for emit in traced]
    assert headers[0] == unsampled
    sampled = parse(headers[1])
    assert sampled is not None and sampled.trace_id == parse(VALID).trace_id  # type: ignore[union-attr]
    assert sampled.span_id != parse(VALID).span_id and len(started) == 1  # type: ignore[union-attr]
    for new in headers[2:]:
        assert parse(new) is not None and new not in (b"xx", unsampled, VALID, other)
    for started_span in started:
        started_span.end()
    [span] = spans.get_finished_spans()
    assert span.name == "processors.thresholds" and f"{span.context.span_id:016x}" == sampled.span_id


@dataclass
class _TraceRecordingChannel(RecordingChannel):
    traceparents: list[bytes | None] = field(default_factory=list)

    async def send(self, notification: Notification) -> None:
        self.traceparents.append(tracing.current.get())
        await super().send(notification)


async def test_a_notification_is_sent_within_its_alerts_trace(spans: InMemorySpanExporter) -> None:
    tracker = IncidentTracker(Policy(resolve_after=60, repeat_interval=600))
    traced = tracker.on_alert(make_alert("dev-1", 0.0), now=0.0)
    untraced = tracker.on_alert(make_alert("dev-2", 0.0), now=0.0)
    channel = _TraceRecordingChannel("log")
    clock = FakeClock()
    dispatcher = Dispatcher(
        {"log": channel},
        Routes(channels={"log": LogRoute(type="log")}),
        dead_letters=RecordingDeadLetters(),
        retry=RetryPolicy(attempts=1),
        clock=clock,
        sleep=clock.sleep,
    )
    await dispatcher.dispatch(traced + untraced, traces={traced[0].idempotency_key: VALID})
    by_device = dict(zip([n.device_id for n in channel.sent], channel.traceparents, strict=True))
    assert by_device["dev-2"] is None
    sent = parse(by_device["dev-1"])
    [span] = spans.get_finished_spans()
    assert span.name == "alerts.notify" and sent is not None
    assert (sent.trace_id, sent.span_id) == (f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")
    assert f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"  # type: ignore[union-attr]
    assert tracing.current.get() is None  # nothing leaks past the send
