"""processors.batching without Kafka: the version check, the chunk items, the commits."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from tests.unit.test_aiokafka_fetch import partition_records
from thermoflow.aiokafka_fetch import deliver_raw_records
from thermoflow.processors.batching import (
    FAUST_VERSION,
    Chunk,
    ChunkScheduler,
    Commits,
    IncompatibleVersions,
    arrived_at,
    batch_timeout,
    check_versions,
)

READINGS = "readings"


def record(offset: int, *, topic: str = READINGS, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=1_000 + offset,
        timestamp_type=0,
        key=b"k",
        value=b"v" * 10,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=10,
        headers=(),
    )


def versions(**found: str) -> object:
    def lookup(name: str) -> str:
        if name not in found:
            raise PackageNotFoundError(name)
        return found[name]

    return lookup


def test_the_pinned_versions_pass_the_check() -> None:
    check_versions()  # the installed set (requirements.lock)
    check_versions(versions(**{"faust-streaming": FAUST_VERSION, "aiokafka": "0.11.0"}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("faust", "aiokafka", "named"),
    [
        ("0.15.4", "0.14.0", "faust-streaming 0.15.4"),
        ("0.16.0", "0.14.0", "faust-streaming 0.16.0"),
        (FAUST_VERSION, "0.15.0", "aiokafka 0.15.0"),
        (FAUST_VERSION, "0.10.2", "aiokafka 0.10.2"),
        (FAUST_VERSION, None, "aiokafka not installed"),
    ],
)
def test_another_version_fails_at_start_up_naming_both_and_what_to_run(
    faust: str, aiokafka: str | None, named: str
) -> None:
    found = {"faust-streaming": faust} | ({"aiokafka": aiokafka} if aiokafka else {})
    with pytest.raises(IncompatibleVersions) as failure:
        check_versions(versions(**found))  # type: ignore[arg-type]
    message = str(failure.value)
    assert named in message
    assert f"faust-streaming=={FAUST_VERSION}" in message and "aiokafka>=0.11,<0.15" in message
    assert "requirements.lock" in message and "tests/integration/processors" in message


def test_a_fetch_of_a_chunked_topic_is_one_record_standing_for_its_chunks() -> None:
    """faust's per-item machinery (message, event, wait_first, queue) was paid once per partition
    of a fetch: at a steady rate a fetch holds a few readings from each of twelve partitions."""
    scheduler = ChunkScheduler.for_topics([READINGS])()
    chunk0 = [record(o, partition=0) for o in range(5, 9)]
    chunk3 = [record(o, partition=3) for o in range(20, 21)]
    items = list(scheduler.iterate({TP(READINGS, 0): chunk0, TP(READINGS, 3): chunk3, TP(READINGS, 4): []}))
    assert [(tp, item.offset) for tp, item in items] == [(TP(READINGS, 0), 8)]  # the first chunk's
    (item,) = [item for _, item in items]
    assert item.value == [(TP(READINGS, 0), chunk0), (TP(READINGS, 3), chunk3)] and item.key is None
    assert (item.topic, item.partition, item.timestamp) == (READINGS, 0, 1_008)


def test_other_topics_keep_faust_s_record_by_record_delivery() -> None:
    scheduler = ChunkScheduler.for_topics([READINGS])()
    changelog = [record(o, topic="changelog") for o in range(3)]
    items = list(scheduler.iterate({TP("changelog", 0): changelog, TP(READINGS, 0): [record(7)]}))
    assert [(tp.topic, item.offset, item.value) for tp, item in items] == [
        (READINGS, 7, [(TP(READINGS, 0), [record(7)])]),
        ("changelog", 0, b"v" * 10),
        ("changelog", 1, b"v" * 10),
        ("changelog", 2, b"v" * 10),
    ]


@dataclass
class FakeConsumer:
    """faust's consumer as :class:`Commits` uses it: the assignment, and the transport's commit."""

    assigned: set[TP]
    answer: bool = True
    commits: list[dict[TP, int]] = field(default_factory=list)

    def assignment(self) -> set[TP]:
        return self.assigned

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        return self.answer


def chunk(partition: int, last: int) -> Chunk:
    """A chunk of ``partition`` ending at offset ``last``."""
    return TP(READINGS, partition), [record(last - 1, partition=partition), record(last, partition=partition)]


async def test_commits_commit_the_offset_after_each_partition_s_last_done_chunk_once() -> None:
    commits = Commits()
    consumer = FakeConsumer(assigned={TP(READINGS, 0), TP(READINGS, 1)})
    commits.done([chunk(0, 9), chunk(1, 4), chunk(0, 19)])
    assert await commits.commit(consumer)
    assert consumer.commits == [{TP(READINGS, 0): 20, TP(READINGS, 1): 5}]
    assert not await commits.commit(consumer)  # nothing moved: no request
    commits.done([chunk(1, 7)])
    assert await commits.commit(consumer)
    assert consumer.commits[-1] == {TP(READINGS, 1): 8}


async def test_commits_leave_out_partitions_not_owned_and_forget_revoked_ones() -> None:
    commits = Commits()
    consumer = FakeConsumer(assigned={TP(READINGS, 0)})
    commits.done([chunk(0, 9), chunk(2, 4)])
    await commits.commit(consumer)
    assert consumer.commits == [{TP(READINGS, 0): 10}]
    commits.forget([TP(READINGS, 0)])
    consumer.assigned = {TP(READINGS, 0), TP(READINGS, 2)}
    assert commits.pending(consumer.assigned) == {TP(READINGS, 2): 5}


async def test_a_commit_refused_by_a_rebalance_stays_pending() -> None:
    commits = Commits()
    consumer = FakeConsumer(assigned={TP(READINGS, 0)}, answer=False)
    commits.done([chunk(0, 9)])
    assert not await commits.commit(consumer)
    assert commits.pending(consumer.assigned) == {TP(READINGS, 0): 10}


def test_a_chunked_topic_s_raw_records_make_one_item_with_the_chunk_s_partition_and_offset() -> None:
    """The worker's topics come as aiokafka's raw records (thermoflow.aiokafka_fetch, tested
    there), which carry no topic or partition: the item takes them from the chunk's TP."""
    deliver_raw_records(["raw-topic"])
    records = list(partition_records("raw-topic", 100, 5, fetch_offset=102))
    assert not isinstance(records[0], ConsumerRecord)
    (item,) = [
        item for _, item in ChunkScheduler.for_topics(["raw-topic"])().iterate({TP("raw-topic", 3): records})
    ]
    assert (item.topic, item.partition, item.offset) == ("raw-topic", 3, 104)


def test_faust_keeps_no_offsets_of_a_worker_s_source_topic(tmp_path: Any) -> None:
    """Its gap bookkeeping (an IntervalTree merged per chunk, every offset of a gap listed at each
    commit) was a sixth of a worker's CPU: the runner commits the source's offsets itself."""
    from thermoflow.metrics import Metrics
    from thermoflow.processors.app import build_app
    from thermoflow.processors.runtime import Registry
    from thermoflow.processors.settings import ProcessorSettings

    registry = Registry()
    registry.function(source="unit-readings", sink="unit-alerts", name="nothing")(lambda batch: [])
    app = build_app(
        ProcessorSettings(), registry=registry, worker_index=0, data_dir=tmp_path, metrics=Metrics("unit")
    )
    (agent,) = app.agents.values()
    assert agent.channel.get_topic_name() == "unit-readings"
    assert agent.channel.acks is False


def stamped(*timestamps_ms: int) -> list[Chunk]:
    """A fetch's chunks, one per partition, each starting with a record stamped as given."""
    return [
        (
            TP(READINGS, partition),
            [SimpleNamespace(offset=0, timestamp=ms), SimpleNamespace(offset=1, timestamp=ms + 5)],
        )
        for partition, ms in enumerate(timestamps_ms)
    ]


def test_a_fetch_arrived_when_its_oldest_record_reached_kafka() -> None:
    # now 500.0 on the loop's clock is 10,000.0 on the wall; the oldest record is 30 ms old
    assert arrived_at(stamped(9_999_990, 9_999_970), 500.0, 0.1, wall=10_000.0) == pytest.approx(499.97)


def test_a_hostile_or_skewed_timestamp_neither_stalls_nor_rushes_a_batch_past_the_window() -> None:
    now, within, wall = 500.0, 0.1, 10_000.0
    assert arrived_at(stamped(99_999_999_999_999), now, within, wall=wall) == now  # ahead: just arrived
    assert arrived_at(stamped(-1), now, within, wall=wall) == pytest.approx(now - within)  # none: due
    assert arrived_at(stamped(0, 9_999_990), now, within, wall=wall) == pytest.approx(now - within)  # backlog
    assert arrived_at([], now, within, wall=wall) == now
    assert arrived_at([(TP(READINGS, 0), [])], now, within, wall=wall) == now


def test_a_batch_is_cut_a_window_after_its_oldest_record_and_never_sooner_than_a_tenth_of_it() -> None:
    assert batch_timeout(None, 500.0, 0.1) == 0.1  # nothing yet: look again in a window
    assert batch_timeout(499.97, 500.0, 0.1) == pytest.approx(0.07)
    assert batch_timeout(499.0, 500.0, 0.1) == pytest.approx(0.01)  # long due: the fetches behind it first
