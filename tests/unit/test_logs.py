"""Library log lines repeated during an outage: the first passes, the rest are counted."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import pytest

from thermoflow import logs
from thermoflow.logs import RepeatFilter, configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, name: str = "aiokafka.client") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


@pytest.fixture
def collected() -> tuple[RepeatFilter, Clock, list[logging.LogRecord]]:
    clock = Clock()
    repeats = RepeatFilter(window=10.0, now=clock)
    out: list[logging.LogRecord] = []

    def handle(line: logging.LogRecord) -> None:
        if repeats.filter(line):
            out.append(line)

    repeats.emit = handle
    return repeats, clock, out


def test_an_outage_of_82_seconds_logs_a_line_per_window_with_the_count_of_the_rest(
    collected: tuple[RepeatFilter, Clock, list[logging.LogRecord]],
) -> None:
    repeats, clock, out = collected
    handle = repeats.emit
    assert handle is not None
    for tick in range(820):  # every 100 ms, alternating between two nodes: one template
        clock.now = tick / 10
        handle(record("Unable connect to node with id %s: %s", tick % 2, "refused"))
    clock.now = 100.0
    handle(record("Kafka is back", name="thermoflow"))  # any later line brings out the last count
    lines = [(line.getMessage(), getattr(line, "repeated", None)) for line in out]
    unable = "Unable connect to node with id 0: refused"
    # 0 s, then one line every 10 s with the 99 held back; the last 19 come out with the next line.
    assert lines == [
        (unable, None),
        *[(unable, 99)] * 8,
        ("Unable connect to node with id 1: refused", 19),
        ("Kafka is back", None),
    ]
    assert 1 + 8 * (99 + 1) + 19 == 820  # every line accounted for


def test_other_templates_and_loggers_are_not_held_back(
    collected: tuple[RepeatFilter, Clock, list[logging.LogRecord]],
) -> None:
    repeats, _, out = collected
    assert repeats.emit is not None
    for _ in range(3):
        repeats.emit(record("Unable connect to node with id %s: %s", 1, "refused"))
        repeats.emit(record("Heartbeat failed for group %s", "g"))
        repeats.emit(record("Unable connect to node with id %s: %s", 1, "refused", name="kafka.other"))
    assert len(out) == 3


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configured_logging_lets_one_of_a_thousand_library_repeats_through(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(json=True)
    for node in range(1000):
        logging.getLogger("aiokafka.client").error("Unable connect to node with id %s: %s", node, "refused")
    logging.getLogger("aiokafka.consumer").error("something else")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == [
        "Unable connect to node with id 0: refused",
        "something else",
    ]


def test_the_line_after_the_window_carries_the_count_in_the_log_output(
    restore_logging: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "REPEAT_WINDOW", 0.05)
    configure_logging(json=True)
    for _ in range(5):
        logging.getLogger("aiokafka.client").error("Unable connect to node with id %s: %s", 1, "refused")
    time.sleep(0.1)
    logging.getLogger("aiokafka.client").error("Unable connect to node with id %s: %s", 1, "refused")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line.get("repeated") for line in lines] == [None, 4]


def test_a_librarys_logged_exception_keeps_its_traceback(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # faust logs a crashed app with exc_info: the line said only "AssertionError()" and where it
    # came from was lost (a rebalance crash took a session to find).
    configure_logging(json=True)
    try:
        assert 1 < 0
    except AssertionError:
        logging.getLogger("faust.app.base").exception("[^-App]: Crashed reason=%r", AssertionError())
    (line,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert "Traceback (most recent call last)" in line["exception"]
    assert "assert 1 < 0" in line["exception"]
    assert "exc_info" not in line
