"""A run's view counts Kafka records from the run's start: the pure part, :class:`Baseline`."""

from __future__ import annotations

from aiokafka import TopicPartition

from thermoflow.observe import Baseline


def _tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


def test_records_before_the_baseline_are_not_counted() -> None:
    start = Baseline({_tp("readings", 0): 60_000, _tp("readings", 1): 39_865})
    now = {_tp("readings", 0): 60_010, _tp("readings", 1): 39_900, _tp("deadletter", 0): 4}
    assert start.counts(now, ["readings"]) == {"readings": 45}


def test_the_empty_baseline_counts_everything_and_a_topic_without_partitions_is_zero() -> None:
    now = {_tp("readings", 0): 7, _tp("readings", 1): 5}
    assert Baseline().counts(now, ["readings", "deadletter"]) == {"readings": 12, "deadletter": 0}


def test_a_partition_the_baseline_has_not_seen_counts_whole() -> None:
    # The topic appeared (or grew partitions) after the run began: all of it is this run's.
    start = Baseline({_tp("readings", 0): 100})
    now = {_tp("readings", 0): 110, _tp("readings", 1): 3, _tp("deadletter", 0): 2}
    assert start.counts(now, ["readings", "deadletter"]) == {"readings": 13, "deadletter": 2}


def test_a_topic_made_again_counts_from_zero_not_below_it() -> None:
    start = Baseline({_tp("readings", 0): 5_000})
    assert start.counts({_tp("readings", 0): 40}, ["readings"]) == {"readings": 40}
