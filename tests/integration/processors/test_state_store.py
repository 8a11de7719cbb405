"""The detectors' state store on real Kafka: a revocation while state is being written."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from thermoflow.processors.state import StateStore, state_key
from thermoflow.settings import ThermoflowSettings


def changed(store: StateStore, device: str, partition: int) -> None:
    """A pair of ``partition`` whose state changed since the last write."""
    rows = store.table.rows([state_key(device, "temperature")], np.array([partition], dtype=np.int64))
    store.table.dirty[rows] = True


async def test_a_partition_revoked_while_its_state_is_written_is_skipped_not_a_crash(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    # The worker's timer wrote state while a rebalance took partition 1: the write read the
    # rows' partitions after its first wait, found -1 and crashed the worker (aiokafka's
    # `assert partition >= 0`), and `thermoflow run --workers 2` went down with it.
    topic = new_topic("state", partitions=2)
    store = StateStore(settings, topic=topic)
    store.mark_loaded([0, 1])
    changed(store, "kept-0", 0)
    changed(store, "moved-1", 1)
    try:
        writing = asyncio.create_task(store.persist())
        await asyncio.sleep(0)  # the write now waits for its producer to start
        store.revoked([1])  # the rebalance: partition 1's rows are freed
        await writing
        changed(store, "new-0", 0)  # a freed row taken by another pair, written in a write of its own
        await store.persist()
    finally:
        await store.close()

    reader = StateStore(settings, topic=topic)
    try:
        await reader.load([0, 1])
        stored = {key for key in reader.table.index}
    finally:
        await reader.close()
    # The revoked partition's state is left to its new owner; the rest is written once, whole.
    assert stored == {state_key("kept-0", "temperature"), state_key("new-0", "temperature")}


async def test_a_write_holds_the_state_as_it_was_when_it_was_asked_for(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    # The worker processes the next batch while a write waits for its acks: what that batch
    # changes belongs to the next write, whose alerts are not acked yet.
    topic = new_topic("state", partitions=1)
    store = StateStore(settings, topic=topic)
    store.mark_loaded([0])
    changed(store, "before", 0)
    try:
        writing = store.persist()
        changed(store, "after", 0)  # the next batch, before the write first runs
        await writing
        first = await stored_keys(settings, topic)
        await store.persist()
    finally:
        await store.close()
    assert first == {state_key("before", "temperature")}
    assert await stored_keys(settings, topic) == {state_key(d, "temperature") for d in ("before", "after")}


async def stored_keys(settings: ThermoflowSettings, topic: str) -> set[str]:
    reader = StateStore(settings, topic=topic)
    try:
        await reader.load([0])
        return set(reader.table.index)
    finally:
        await reader.close()
