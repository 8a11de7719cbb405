"""Structured logs: one JSON object (or key=value line on a terminal) per event.

Bind what is known, so every line of a batch carries it::

    log = get_logger(__name__).bind(topic=topic, partition=partition)
    log.info("batch_committed", offset=offset, records=n)
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog

_configured = False


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (a test runner swaps it per test), not at setup."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = cast(TextIO, _CurrentStderr())


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
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.getLevelName(level.upper()), logging.INFO))
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str | None = None, **bound: Any) -> Any:
    """A structlog logger, with ``bound`` key-values on every line it writes."""
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)
