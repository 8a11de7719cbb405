"""Structured logs: one JSON object (or key=value line on a terminal) per event.

Bind what is known, so every line of a batch carries it::

    log = get_logger(__name__).bind(topic=topic, partition=partition)
    log.info("batch_committed", offset=offset, records=n)

Libraries' lines (aiokafka, faust, paho) pass a :class:`RepeatFilter`: during a Kafka outage
aiokafka logs "Unable connect to node ..." every 100 ms, which would bury everything else.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO, cast

import structlog

from thermoflow import tracing

_configured = False


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (a test runner swaps it per test), not at setup."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = cast(TextIO, _CurrentStderr())

#: Seconds a library line's repeats are held back before one line says how many there were.
REPEAT_WINDOW = 10.0


@dataclass
class _Window:
    opened: float
    repeats: int = 0
    last: logging.LogRecord | None = None


class RepeatFilter(logging.Filter):
    """Lets a line through once per ``window`` per logger and message template; counts the rest.

    The first line of a template passes; its repeats within ``window`` seconds are dropped and
    counted. Once the window has passed, the next line of that template passes with
    ``repeated=N`` (the lines dropped meanwhile); if the template fell silent, its last dropped
    line is emitted with the count, through ``emit`` (the handler), when any later line comes by.
    Lines differing only in their arguments (another node id) share a template.

    >>> clock = [0.0]
    >>> repeats = RepeatFilter(window=10.0, now=lambda: clock[0])
    >>> line = lambda: logging.LogRecord("aiokafka", 40, "", 0, "Unable connect to node %s", ("1",), None)
    >>> passed = []
    >>> for tick in range(0, 105):  # every 100 ms for 10.4 s
    ...     clock[0] = tick / 10
    ...     record = line()
    ...     if repeats.filter(record):
    ...         passed.append((clock[0], getattr(record, "repeated", None)))
    >>> passed
    [(0.0, None), (10.0, 99)]
    """

    def __init__(self, *, window: float = REPEAT_WINDOW, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self._now = now
        self._windows: dict[tuple[str, object], _Window] = {}
        self._lock = threading.Lock()
        #: Where the count of a template that fell silent goes (``handler.handle``); None drops it.
        self.emit: Callable[[logging.LogRecord], object] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeated", None) is not None:
            return True  # a count this filter emitted itself
        now = self._now()
        key = (record.name, record.msg)
        with self._lock:
            silent = self._close_windows(now, keep=key)
            window = self._windows.get(key)
            if window is not None and now - window.opened < self.window:
                window.repeats += 1
                window.last = record
                passed = False
            else:
                if window is not None and window.repeats:
                    record.repeated = window.repeats
                self._windows[key] = _Window(opened=now)
                passed = True
        for last in silent:
            if self.emit is not None:
                self.emit(last)
        return passed

    def _close_windows(self, now: float, *, keep: tuple[str, object]) -> list[logging.LogRecord]:
        """Forget the templates whose window passed; their last dropped line, with its count."""
        closed = [k for k, w in self._windows.items() if k != keep and now - w.opened >= self.window]
        counts = []
        for k in closed:
            window = self._windows.pop(k)
            if window.repeats and window.last is not None:
                window.last.repeated = window.repeats
                counts.append(window.last)
        return counts


def add_trace_id(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A line written while one record is handled (:func:`thermoflow.tracing.handling`) carries
    that record's ``trace_id``, unless the line names one itself.

    >>> with tracing.handling(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
    ...     add_trace_id(None, "info", {"event": "sent"})
    {'event': 'sent', 'trace_id': '4bf92f3577b34da6a3ce929d0e0e4736'}
    >>> add_trace_id(None, "info", {"event": "idle"})
    {'event': 'idle'}
    """
    if "trace_id" not in event:
        traceparent = tracing.current.get()
        if traceparent is not None:
            trace_id = tracing.trace_id_of(traceparent)
            if trace_id is not None:
                event["trace_id"] = trace_id
    return event


def configure_logging(*, level: str = "INFO", json: bool | None = None, component: str | None = None) -> None:
    """Route structlog and stdlib logging to stderr, as JSON lines unless stderr is a terminal."""
    global _configured
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if component:
        structlog.contextvars.bind_contextvars(component=component)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_STDERR),
        cache_logger_on_first_use=True,
    )
    # Libraries (aiokafka, faust, paho) log through stdlib logging: same format, same stream.
    handler = logging.StreamHandler(_STDERR)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # format_exc_info: a library's logged exception keeps its traceback (faust's "Crashed")
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[
                *shared,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=("repeated",)),
            ],
        )
    )
    repeats = RepeatFilter(window=REPEAT_WINDOW)
    repeats.emit = handler.handle
    handler.addFilter(repeats)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.getLevelName(level.upper()), logging.INFO))
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str | None = None, **bound: Any) -> Any:
    """A structlog logger, with ``bound`` key-values on every line it writes."""
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)
