"""A stateful function's state write: taken before the next batch, waited for beside it, and
the held batches' offsets committed only once it is stored."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from thermoflow.processors.app import BatchRunner
from thermoflow.processors.batching import Chunk
from thermoflow.processors.columns import ReadingBatch
from thermoflow.processors.runtime import Emit, FunctionSpec
from thermoflow.processors.settings import ProcessorSettings

TP0 = TP("readings", 0)


@dataclass
class Detectors:
    """A stateful function whose writes the test acks or fails; ``state`` stands for its table."""

    state: int = 0
    writes: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)

    def __call__(self, batch: ReadingBatch) -> Sequence[Emit]:
        return []

    async def load(self, partitions: Collection[int]) -> None:
        return None

    def revoked(self, partitions: Collection[int]) -> None:
        return None

    def on_timer(self, *, now: float, caught_up: Callable[[int], bool]) -> Sequence[Emit]:
        return []

    def persist(self) -> asyncio.Future[None]:
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writes.append((self.state, acked))  # the state as it is at the call
        return acked


@dataclass
class Consumer:
    """faust's consumer as the runner uses it: its assignment, and the commits it was asked for."""

    assigned: set[TP] = field(default_factory=lambda: {TP0})
    commits: list[dict[TP, int]] = field(default_factory=list)

    def assignment(self) -> set[TP]:
        return self.assigned

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        return True


def chunk(first: int, last: int) -> Chunk:
    return (TP0, [SimpleNamespace(offset=offset) for offset in range(first, last + 1)])


def runner(detectors: Detectors, consumer: Consumer) -> BatchRunner:
    spec = FunctionSpec("thresholds", "readings", "alerts", lambda settings: detectors)
    return BatchRunner(
        spec=spec,
        body=detectors,
        sink=SimpleNamespace(app=SimpleNamespace(consumer=consumer)),
        deadletter=None,
        settings=ProcessorSettings(),
        metrics=None,  # type: ignore[arg-type]
    )


async def settled() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def writing_first_batch() -> tuple[Detectors, Consumer, BatchRunner]:
    """A runner whose first held batch (offsets 0-9) is being written, with the state as 1."""
    detectors, consumer = Detectors(state=1), Consumer()
    batches = runner(detectors, consumer)
    batches.held.append(chunk(0, 9))
    await batches.flush()  # returns with the write under way
    return detectors, consumer, batches


async def test_the_next_batch_goes_on_while_the_state_is_written_and_commits_wait_for_it() -> None:
    detectors, consumer, batches = await writing_first_batch()
    assert [state for state, _ in detectors.writes] == [1]
    detectors.state = 2  # the next batch, processed meanwhile
    batches.held.append(chunk(10, 19))
    await settled()
    assert consumer.commits == []  # not before the state covering it is stored

    detectors.writes[0][1].set_result(None)
    await settled()
    assert consumer.commits == [{TP0: 10}]  # the held batch only, not the one processed since

    await batches.flush()
    detectors.writes[1][1].set_result(None)
    await batches.settle()
    assert [state for state, _ in detectors.writes] == [1, 2]
    assert consumer.commits == [{TP0: 10}, {TP0: 20}]


async def test_a_failed_write_raises_at_the_next_flush_and_commits_nothing() -> None:
    detectors, consumer, batches = await writing_first_batch()
    detectors.writes[0][1].set_exception(ConnectionError("state topic unreachable"))
    batches.held.append(chunk(10, 19))
    with pytest.raises(ConnectionError, match="unreachable"):
        await batches.flush()
    assert consumer.commits == []
    assert len(detectors.writes) == 1  # nothing written past a failed write


async def test_one_write_at_a_time_in_order() -> None:
    detectors, consumer, batches = await writing_first_batch()
    batches.held.append(chunk(10, 19))
    second = asyncio.ensure_future(batches.flush())
    await settled()
    assert not second.done() and len(detectors.writes) == 1  # waits for the write before it
    detectors.writes[0][1].set_result(None)
    await second
    detectors.writes[1][1].set_result(None)
    await batches.settle()
    assert consumer.commits == [{TP0: 10}, {TP0: 20}]


async def test_a_batch_held_while_its_partition_was_revoked_is_not_committed() -> None:
    detectors, consumer, batches = await writing_first_batch()
    consumer.assigned = set()  # the rebalance, while the write waits
    detectors.writes[0][1].set_result(None)
    await batches.settle()
    assert consumer.commits == []


def test_the_runner_sees_the_detectors_as_stateful() -> None:
    detectors: Any = Detectors()
    assert runner(detectors, Consumer()).stateful is detectors
