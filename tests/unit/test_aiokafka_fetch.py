"""Idle pacing of fetches and raw records (:mod:`thermoflow.aiokafka_fetch`), on aiokafka's own objects."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, Fetcher, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord, TopicPartition

from thermoflow import aiokafka_fetch, kafka
from thermoflow.aiokafka_fetch import IDLE_FETCH_WAIT, FetchPacing, check_version, deliver_raw_records
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
    assert options == [(1, round(IDLE_FETCH_WAIT * 1000)), (256 << 10, 100)]


def partition_records(topic: str, first: int, count: int, *, fetch_offset: int) -> Any:
    """aiokafka's PartitionRecords over one record batch of ``count`` records from offset ``first``."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for delta in range(count):
        builder.append(delta, timestamp=1_000 + delta, key=b"k", value=b"v%d" % delta, headers=[("h", b"x")])
    data = bytearray(builder.build())
    data[0:8] = first.to_bytes(8, "big", signed=True)  # the batch's base offset
    return PartitionRecords(
        TopicPartition(topic, 3),
        MemoryRecords(bytes(data)),
        [],
        fetch_offset,
        None,
        None,
        True,
        READ_UNCOMMITTED,
    )


def test_a_raw_topic_s_records_come_as_aiokafka_decoded_them_from_the_fetch_offset() -> None:
    deliver_raw_records(["raw-readings"])
    fetched = partition_records("raw-readings", 100, 5, fetch_offset=102)  # a batch fetched from its start
    records = list(fetched)
    assert [(r.offset, r.key, r.value, list(r.headers)) for r in records] == [
        (o, b"k", b"v%d" % (o - 100), [("h", b"x")]) for o in range(102, 105)
    ]
    assert not isinstance(records[0], ConsumerRecord) and fetched.next_fetch_offset == 105
    # any other topic: aiokafka's own records
    other = list(partition_records("other-topic", 0, 2, fetch_offset=0))
    assert [(r.topic, r.partition, r.offset) for r in other] == [("other-topic", 3, 0), ("other-topic", 3, 1)]


def test_raw_records_survive_another_unpacking_installed_over_them_and_keep_its_topics() -> None:
    deliver_raw_records(["raw-readings"])
    ours, aiokafkas = PartitionRecords._unpack_records, aiokafka_fetch._unpack_wrapped
    assert aiokafkas is not None
    seen: list[str] = []

    def another(self: Any) -> Any:  # e.g. the processors' own, installed later over aiokafka's
        seen.append(self._tp.topic)
        yield from aiokafkas(self)

    PartitionRecords._unpack_records = another
    try:
        deliver_raw_records(["raw-readings"])
        raw = next(iter(partition_records("raw-readings", 0, 1, fetch_offset=0)))
        assert not isinstance(raw, ConsumerRecord)
        assert isinstance(next(iter(partition_records("theirs", 0, 1, fetch_offset=0))), ConsumerRecord)
        assert seen == ["theirs"]
    finally:
        PartitionRecords._unpack_records = ours
