"""W3C trace context on every record, OpenTelemetry spans for the sampled few.

Every MQTT message gets a ``traceparent`` at the bridge (all of its readings share it); it
travels in the Kafka headers of the readings, of the alert a reading triggers, and on to the
notification's webhook request. So one alert can be followed, by its ``trace_id`` in the JSON
logs and in a tracing back end, from the device's message to the notification.

The hot path pays for a header, not for a span: a new traceparent is a per-process random
trace-id half, a counter and a per-process span id, formatted in one operation
(:class:`TraceSource`), and the sampled flag is decided with a geometric skip rather than a
random draw per message. Real spans (:class:`Tracing`) start only for records whose
traceparent says *sampled*, and only in a process with an exporter: one set up from
``OTEL_EXPORTER_OTLP_ENDPOINT`` (OTLP over HTTP, :func:`configure`), or a test's own. Without
one nothing is recorded or exported, and the headers pass through unchanged.

Reading a traceparent never raises: a malformed, hostile or missing header gives ``None``,
and the record starts a new trace (:func:`parse`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:  # OpenTelemetry is imported when spans are turned on, not by every importer of logs
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

#: The Kafka header (and HTTP header) that carries the context (W3C Trace Context, level 1).
HEADER: Final = "traceparent"

#: Longer header values are not looked at: a version-00 traceparent has 55 characters, a
#: future version a few more; a megabyte of garbage is refused before it is decoded.
_MAX_LENGTH: Final = 512
_VERSION_00: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# A future version may append fields after a dash; its first four parts keep their shape.
_ANY_VERSION: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL
)
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


class TraceContext(NamedTuple):
    """A parsed traceparent: the trace, the caller's span, and whether the trace is sampled."""

    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits, not all zero
    sampled: bool


def parse(value: bytes | str | None) -> TraceContext | None:
    """The context of a traceparent header, or None if it is missing or not a valid one.

    Never raises, whatever the bytes: the caller starts a new trace instead.

    >>> parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    TraceContext(trace_id='4bf92f3577b34da6a3ce929d0e0e4736', span_id='00f067aa0ba902b7', sampled=True)
    >>> parse(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01") is None  # all-zero trace id
    True
    >>> parse("not a traceparent") is None, parse(None) is None
    (True, True)
    """
    if value is None or len(value) > _MAX_LENGTH:
        return None
    try:
        text = value.decode("ascii") if isinstance(value, bytes | bytearray) else str(value)
    except UnicodeDecodeError:
        return None
    match = _VERSION_00.fullmatch(text)
    if match is None:
        match = _ANY_VERSION.fullmatch(text)
        if match is None or match.group(1) in ("00", "ff"):  # 00 has no extra fields; ff is invalid
            return None
        trace_id, span_id, flags = match.group(2, 3, 4)
    else:
        trace_id, span_id, flags = match.group(1, 2, 3)
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


def format_traceparent(context: TraceContext) -> bytes:
    """The version-00 header value of ``context``.

    >>> format_traceparent(TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", False))
    b'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00'
    """
    flags = "01" if context.sampled else "00"
    return f"00-{context.trace_id}-{context.span_id}-{flags}".encode("ascii")


def header_of(headers: Sequence[tuple[str, bytes]] | None) -> bytes | None:
    """The traceparent among a Kafka record's headers (the first, if a record has several)."""
    if headers:
        for name, value in headers:
            if name == HEADER:
                return value
    return None


def trace_id_of(value: bytes | str | None) -> str | None:
    """The trace id of a traceparent header, for a log line; None if the header is not valid."""
    context = parse(value)
    return context.trace_id if context is not None else None


class TraceSource:
    """New traceparents, cheaply: a trace-id half drawn once per process, a counter for the other
    half, one span id for the process (a parent id need only be unique within its trace), and
    the sampled flag on a ``ratio`` of them, at random.

    The flag is decided by counting down a geometric random gap (drawn once per *sampled*
    trace), not with a random draw per message: sampling every n-th message instead would
    alias with a fleet that publishes its devices in a fixed order, and pick the same device
    every time.

    >>> source = TraceSource(ratio=0.0)
    >>> first, second = parse(source.new()), parse(source.new())
    >>> first.trace_id != second.trace_id, first.sampled, len(source.new())
    (True, False, 55)
    >>> parse(TraceSource(ratio=1.0).new()).sampled
    True
    """

    def __init__(self, *, ratio: float, rng: random.Random | None = None) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"a sampling ratio is between 0 and 1, not {ratio}")
        self.ratio = ratio
        self._rng = rng or random.Random()
        rng_bits = self._rng.getrandbits
        self._head = b"00-%016x" % (rng_bits(64) | 1 << 63)  # the high bit set: never all zero
        span = b"%016x" % (rng_bits(64) or 1)
        self._unsampled_tail = b"-" + span + b"-00"
        self._sampled_tail = b"-" + span + b"-01"
        self._counter = itertools.count(rng_bits(63))
        self._skip = self._gap()

    def _gap(self) -> int:
        """Messages until the next sampled one: geometric, so each message is sampled with ``ratio``."""
        if self.ratio <= 0.0:
            return -1  # never counts down to 0
        if self.ratio >= 1.0:
            return 1
        return 1 + int(math.log(1.0 - self._rng.random()) / math.log(1.0 - self.ratio))

    def sample(self) -> bool:
        """Whether the next trace is sampled (each one with probability ``ratio``)."""
        self._skip -= 1
        if self._skip:
            return False
        self._skip = self._gap()
        return True

    def new(self, *, sampled: bool | None = None) -> bytes:
        """A traceparent for a new trace; sampled as :meth:`sample` says unless ``sampled`` is given.

        The bridge calls this once per MQTT message: written for speed (one formatting
        operation; the counter, started at a random 63-bit value, cannot outgrow 16 digits).
        """
        if sampled is None:
            self._skip -= 1
            if self._skip:
                return b"%s%016x%s" % (self._head, next(self._counter), self._unsampled_tail)
            self._skip = self._gap()
            sampled = True
        tail = self._sampled_tail if sampled else self._unsampled_tail
        return b"%s%016x%s" % (self._head, next(self._counter), tail)


def _remote(context: TraceContext) -> Context:
    """An OpenTelemetry context whose current span is the caller's (remote) span."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    span_context = SpanContext(
        trace_id=int(context.trace_id, 16),
        span_id=int(context.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if context.sampled else TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def traceparent_of(span: Span) -> bytes:
    """The header a span's children get: its trace id and its own span id."""
    context = span.get_span_context()
    flags = "01" if context.trace_flags.sampled else "00"
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags}".encode("ascii")


class Tracing:
    """Spans for sampled traces, through ``provider``; without one (no exporter) it records nothing.

    Args:
        provider: the SDK tracer provider (None: tracing off, :attr:`enabled` False).
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("thermoflow") if provider is not None else None

    def root(self, name: str, *, attributes: Mapping[str, Any] | None = None) -> Span | None:
        """A new sampled trace's first span (the bridge's), or None when tracing is off."""
        if self._tracer is None:
            return None
        from opentelemetry.context import Context

        return self._tracer.start_span(name, context=Context(), attributes=attributes)

    def start(
        self,
        name: str,
        parent: bytes | str | None,
        *,
        start_time: int | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Span | None:
        """A child span of the record's traceparent, if tracing is on and that trace is sampled.

        Args:
            name: the span's name, ``component.operation``.
            parent: the record's traceparent header (anything: an invalid one gives None).
            start_time: when the work began, in ns since the epoch (``time.time_ns()``).
            attributes: the span's attributes.
        """
        if self._tracer is None:
            return None
        context = parse(parent)
        if context is None or not context.sampled:
            return None
        return self._tracer.start_span(
            name, context=_remote(context), start_time=start_time, attributes=attributes
        )


class MessageTraces:
    """Each incoming message's trace: a new traceparent, and a root span while a sampled one is held.

    The bridge starts one per MQTT message (:meth:`begin`) and ends the spans when the messages
    are acked or dropped (:meth:`end`, :meth:`end_all`). An unsampled message, or any message while
    no exporter is set, costs its header and nothing more.

    Args:
        ratio: the share of messages sampled (:class:`TraceSource`).
        service: the process's name in its spans (:func:`configure`); the root span is
            ``<service>.message``.
    """

    _SAMPLED: Final = ord("1")  # the last byte of a sampled traceparent as TraceSource writes them

    def __init__(self, *, ratio: float, service: str) -> None:
        self._source = TraceSource(ratio=ratio)
        self._tracing = configure(service)
        self._name = f"{service}.message"
        self._spans: dict[int, Span] = {}  # by id() of the held message, until it is acked or dropped

    def begin(
        self,
        message: object,
        *,
        attributes: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    ) -> bytes:
        """The message's traceparent; a sampled one gets a span that lasts until :meth:`end`.

        ``attributes`` may be a function that builds them: it is called only for a span, so an
        unsampled message (nearly every one) does not pay for them.
        """
        traceparent = self._source.new()
        if traceparent[-1] != self._SAMPLED or not self._tracing.enabled:  # the common case
            return traceparent
        if callable(attributes):
            attributes = attributes()
        span = self._tracing.root(self._name, attributes=attributes)
        if span is None:
            return traceparent
        self._spans[id(message)] = span
        return traceparent_of(span)

    def end(self, messages: Sequence[Any], *, acked: bool, count: str = "records") -> None:
        """End the spans of ``messages`` (each may have a ``count`` attribute, e.g. its records)."""
        if not self._spans:
            return
        for message in messages:
            span = self._spans.pop(id(message), None)
            if span is not None:
                span.set_attribute("thermoflow.acked", acked)
                span.set_attribute(f"thermoflow.{count}", getattr(message, count, 0))
                span.end()

    def end_all(self) -> None:
        """End every open span, unacked (the connection was lost: the messages come again)."""
        for span in self._spans.values():
            span.set_attribute("thermoflow.acked", False)
            span.end()
        self._spans.clear()


_tracing = Tracing()
_configured = False

#: The traceparent of the record being handled by this task, for log lines (:mod:`thermoflow.logs`)
#: and for a channel's outgoing request (the webhook's ``traceparent`` header).
current: ContextVar[bytes | None] = ContextVar("thermoflow_traceparent", default=None)


def tracing() -> Tracing:
    """The process's tracing (off until :func:`configure` or :func:`install` turned it on)."""
    return _tracing


def install(provider: TracerProvider | None) -> Tracing:
    """Use ``provider`` for this process's spans (a test's, with an in-memory exporter); None: off."""
    global _tracing, _configured
    _tracing = Tracing(provider)
    _configured = True
    return _tracing


def configure(service: str, *, exporter: SpanExporter | None = None) -> Tracing:
    """Turn spans on, exported over OTLP/HTTP, if ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; otherwise leave them off. Once per process:
    later calls return what the first one set up.

    The exporter reads OpenTelemetry's own variables (endpoint, headers, timeout, and the batch
    processor's ``OTEL_BSP_*``). The service name is ``OTEL_SERVICE_NAME`` if set, else
    ``thermoflow-<service>``. The sampler follows the parent's flag: the bridge alone decides,
    with the ``trace_sample_ratio`` setting, which traces are sampled.
    """
    if _configured:
        return _tracing
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter is None and not endpoint:
        return install(None)
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"thermoflow-{service}"}
    provider = TracerProvider(resource=Resource.create(attributes), sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return install(provider)


@contextlib.contextmanager
def handling(traceparent: bytes | None) -> Iterator[None]:
    """While handling one record: its traceparent is :data:`current` (logs show its trace id)."""
    token = current.set(traceparent)
    try:
        yield
    finally:
        current.reset(token)
