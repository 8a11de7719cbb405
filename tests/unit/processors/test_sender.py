"""The one partitioner the bridge, the processors and the alert store share is aiokafka's own."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from thermoflow.kafka import partition_for


@given(key=st.binary(min_size=1, max_size=64), partitions=st.integers(1, 64))
def test_partition_for_matches_aiokafka_default_partitioner(key: bytes, partitions: int) -> None:
    """A device's alerts must land on the partition they landed on when faust sent them one by one."""
    every = list(range(partitions))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, every, every)
