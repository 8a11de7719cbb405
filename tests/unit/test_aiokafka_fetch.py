"""Idle pacing of a consumer's fetches (:mod:`thermoflow.aiokafka_fetch`), on the fetcher's own attributes."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
from aiokafka.consumer.fetcher import Fetcher

from thermoflow import kafka
from thermoflow.aiokafka_fetch import IDLE_FETCH_WAIT, FetchPacing, check_version
from thermoflow.settings import ThermoflowSettings


def started_consumer() -> SimpleNamespace:
    """What a started AIOKafkaConsumer holds of its fetcher: the two values a fetch request is built from."""
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_min_bytes=262_144, _fetch_max_wait_ms=75))


def test_an_empty_fetch_makes_the_next_wait_for_the_first_byte_and_records_make_it_gather_again() -> None:
    consumer = started_consumer()
    pacing = FetchPacing(consumer, min_bytes=262_144, wait=0.075)
    pacing.fetched(120)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (262_144, 75)
    pacing.fetched(0)
    assert pacing.idle
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (
        1,
        round(IDLE_FETCH_WAIT * 1000),
    )
    pacing.fetched(3)
    assert not pacing.idle
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (262_144, 75)


def test_a_consumer_not_started_yet_is_left_alone() -> None:
    consumer = SimpleNamespace(_fetcher=None)
    pacing = FetchPacing(consumer, min_bytes=1000, wait=0.05)
    pacing.fetched(0)
    assert not pacing.idle  # so the first fetch of the started consumer still switches it


def test_on_an_aiokafka_it_was_not_written_for_the_pacing_does_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("thermoflow.aiokafka_fetch.check_version", lambda: False)
    consumer = started_consumer()
    FetchPacing(consumer, min_bytes=262_144, wait=0.075).fetched(0)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (262_144, 75)


def test_the_installed_aiokafka_builds_its_fetch_requests_from_the_attributes_the_pacing_sets() -> None:
    # The pin: an aiokafka that renames them would leave the pacing setting attributes nobody reads.
    assert check_version()
    source = inspect.getsource(Fetcher._get_actions_per_node)
    assert "self._fetch_max_wait_ms" in source and "self._fetch_min_bytes" in source


async def test_a_sparse_consumer_fetches_from_the_first_byte_and_waits_long_for_it() -> None:
    sparse = kafka.consumer(ThermoflowSettings(), "alerts", group_id="g", sparse=True)
    gathering = kafka.consumer(ThermoflowSettings(), "readings", group_id="g")
    options = [(c._fetch_min_bytes, c._fetch_max_wait_ms) for c in (sparse, gathering)]
    for consumer in (sparse, gathering):
        await consumer.stop()  # never started: only marks it closed
    assert options == [(1, round(IDLE_FETCH_WAIT * 1000)), (256 << 10, 75)]
