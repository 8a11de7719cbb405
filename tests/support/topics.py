"""Reading a whole Kafka topic back in a test: the records a component wrote, from the start."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import unique_name
from thermoflow import kafka
from thermoflow.settings import ThermoflowSettings


async def read_topic(
    settings: ThermoflowSettings,
    topic: str,
    *,
    at_least: int = 0,
    timeout: float = 60.0,
    extra_polls: int = 1,
) -> list[Any]:
    """Every record of ``topic`` from its start, in a group of its own.

    Polls until ``at_least`` records are there (or ``timeout`` passes), then ``extra_polls`` more
    half-second polls, so that records beyond the expected ones are seen too.
    """
    consumer = kafka.consumer(settings, topic, group_id=unique_name("read"))
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < at_least and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        for _ in range(extra_polls):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records
