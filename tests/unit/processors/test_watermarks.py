"""The processor's side of the watermarks: event times, idle partitions, outages, rebalances."""

from __future__ import annotations

import numpy as np

from thermoflow.events import Reading, encode
from thermoflow.processors.columns import RawRecord, decode_batch
from thermoflow.processors.watermarks import PartitionProgress, latest_per_partition


def _caught_up(partition: int, next_offset: int | None) -> bool:
    return True


def _behind(partition: int, next_offset: int | None) -> bool:
    return False


def test_event_time_is_the_device_time_but_never_later_than_its_receipt() -> None:
    readings = [
        Reading(device_id="ahead", value=1.0, ts=5_000.0, received_at=1_000.0),  # clock an hour fast
        Reading(device_id="backlog", value=1.0, ts=900.0, received_at=1_000.0),  # sent late by the bridge
        Reading(device_id="other", value=1.0, ts=950.0, received_at=950.1),
    ]
    records = [
        RawRecord(r.device_id.encode(), encode(r), p, 10) for r, p in zip(readings, [0, 0, 1], strict=True)
    ]
    batch, rejects = decode_batch("readings", records)
    assert not rejects
    assert batch.event_ts.tolist() == [1_000.0, 900.0, 950.0]
    assert latest_per_partition(batch.partition, batch.event_ts) == {0: 1_000.0, 1: 950.0}


def test_a_partition_reports_the_largest_event_time_processed_and_never_goes_back() -> None:
    progress = PartitionProgress(source="thresholds", topic="readings", idle_after=30.0)
    progress.assign({0, 1}, now=0.0)
    assert progress.marks(partitions=2, caught_up=_behind, now=1.0) == []  # nothing true to say yet
    progress.processed(0, event_time=100.0, next_offset=5, now=1.0)
    progress.processed(0, event_time=90.0, next_offset=9, now=2.0)  # a late reading
    progress.processed(1, event_time=None, next_offset=3, now=2.0)  # only dead letters
    [mark] = progress.marks(partitions=2, caught_up=_behind, now=3.0)
    assert (mark.partition, mark.partitions, mark.event_time, mark.idle) == (0, 2, 100.0, False)


def test_a_quiet_caught_up_partition_turns_idle_and_follows_the_clock() -> None:
    progress = PartitionProgress(source="thresholds", topic="readings", idle_after=30.0)
    progress.assign({0}, now=0.0)
    progress.processed(0, event_time=100.0, next_offset=5, now=100.0)
    [busy] = progress.marks(partitions=1, caught_up=_caught_up, now=129.0)
    assert (busy.event_time, busy.idle) == (100.0, False)
    [behind] = progress.marks(partitions=1, caught_up=_behind, now=200.0)  # quiet but lagging
    assert (behind.event_time, behind.idle) == (100.0, False)
    [idle] = progress.marks(partitions=1, caught_up=_caught_up, now=200.0)
    assert (idle.event_time, idle.idle) == (170.0, True)
    progress.processed(0, event_time=201.0, next_offset=6, now=201.0)
    [back] = progress.marks(partitions=1, caught_up=_caught_up, now=202.0)
    assert (back.event_time, back.idle) == (201.0, False)


def test_trouble_reaching_kafka_and_a_new_assignment_restart_the_quiet_period() -> None:
    progress = PartitionProgress(source="thresholds", topic="readings", idle_after=30.0)
    progress.assign({0}, now=0.0)
    progress.processed(0, event_time=10.0, next_offset=1, now=10.0)
    progress.disturbed(now=100.0)  # watermarks not acked: Kafka was down until now
    [mark] = progress.marks(partitions=1, caught_up=_caught_up, now=129.0)
    assert (mark.event_time, mark.idle) == (10.0, False)
    assert progress.marks(partitions=1, caught_up=_caught_up, now=130.0)[0].idle

    progress.assign({1}, now=200.0)  # a rebalance: partition 0 went elsewhere, 1 came
    assert progress.marks(partitions=2, caught_up=_caught_up, now=229.0) == []
    [new] = progress.marks(partitions=2, caught_up=_caught_up, now=230.0)
    assert (new.partition, new.event_time, new.idle) == (1, 200.0, True)


def test_latest_per_partition_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(7)
    partition = rng.integers(0, 5, 1000)
    values = rng.normal(size=1000)
    expected: dict[int, float] = {}
    for p, v in zip(partition.tolist(), values.tolist(), strict=True):
        expected[p] = max(expected.get(p, -np.inf), v)
    assert latest_per_partition(partition, values) == expected


def test_the_emitter_moves_partitions_alike_from_the_records_or_from_the_chunks_ends() -> None:
    """The runner passes each partition's end from its chunks, not reading every record's offset."""
    from types import SimpleNamespace

    from thermoflow.processors.app import WatermarkEmitter
    from thermoflow.processors.settings import ProcessorSettings

    def reading(device: str, ts: float) -> bytes:
        return encode(Reading(device_id=device, value=20.0, ts=ts, received_at=ts))

    records = [RawRecord(b"a", reading("a", 5.0), 0, 7), RawRecord(b"b", reading("b", 9.0), 3, 40)]
    records += [RawRecord(b"c", b"not json", 3, 41)]  # a dead letter still moves its partition on
    batch, _ = decode_batch("readings", records)
    progress = []
    for ends in (None, {0: 8, 3: 42}):
        emitter = WatermarkEmitter(
            app=SimpleNamespace(),
            sink=SimpleNamespace(),
            sink_topic="alerts",
            progress=PartitionProgress(source="f", topic="readings", idle_after=30.0),
            settings=ProcessorSettings(),
            clock=lambda: 100.0,
        )
        emitter.processed(records, batch, None, ends)
        progress.append(
            {p: (emitter.progress.next_offset(p), emitter.progress._partitions[p].event_time) for p in (0, 3)}
        )
    assert progress[0] == progress[1] == {0: (8, 5.0), 3: (42, 9.0)}
