"""The consume-and-commit loop's ordering, commit and rebalance logic, on an in-memory fake consumer.

The fake stands in for aiokafka only where the loop's own decisions are tested (which offsets
are committed when, what a revocation does); the loop against a real broker, through
rebalances, is tested by each consumer's integration test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

from thermoflow import consume
from thermoflow.aiokafka_fetch import FetchPacing
from thermoflow.metrics import Metrics
from thermoflow.watchdog import Watchdog

TOPIC = "readings"


def tp(partition: int) -> TopicPartition:
    return TopicPartition(TOPIC, partition)


def fetched(
    partition: int, first: int, count: int
) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    """``count`` records of ``partition`` from offset ``first``."""
    return {
        tp(partition): [
            ConsumerRecord(TOPIC, partition, offset, 0, 0, None, b"x", None, 0, 1, [])
            for offset in range(first, first + count)
        ]
    }


class FakeConsumer:
    """Fetches what the test queues; records commits; raises the queued commit errors first."""

    def __init__(self) -> None:
        self.fetches: asyncio.Queue[consume.Records] = asyncio.Queue()
        self.commits: list[dict[TopicPartition, int]] = []
        self.refusals: list[Exception] = []
        self.listener: ConsumerRebalanceListener | None = None

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None:
        self.listener = listener

    async def getmany(self, *, timeout_ms: int, max_records: int | None) -> consume.Records:
        try:
            return await asyncio.wait_for(self.fetches.get(), timeout_ms / 1000)
        except TimeoutError:
            return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.refusals:
            raise self.refusals.pop(0)
        self.commits.append(offsets)


class Handler:
    """Hands out one future per non-empty batch; the test completes them."""

    def __init__(self) -> None:
        self.batches: list[consume.Batch] = []
        self.durable: list[consume.Durable] = []

    async def __call__(self, batch: consume.Batch) -> consume.Durable:
        if not batch.count:
            return consume.settled()
        self.batches.append(batch)
        future: consume.Durable = asyncio.get_running_loop().create_future()
        self.durable.append(future)
        return future


class RecordingWatchdog(Watchdog):
    def __init__(self) -> None:
        super().__init__(component="test", stall_after=0)
        self.waits: list[int] = []
        self.progressed = 0

    def waiting(self, count: int) -> None:
        self.waits.append(count)
        super().waiting(count)

    def progress(self) -> None:
        self.progressed += 1
        super().progress()


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if check():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    def __init__(self, consumer: FakeConsumer, loop: consume.ConsumeLoop) -> None:
        self.consumer = consumer
        self.loop = loop
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(loop.run(self.stop))

    @property
    def listener(self) -> ConsumerRebalanceListener:
        assert self.consumer.listener is not None
        return self.consumer.listener

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)


@pytest.fixture
def consumer() -> FakeConsumer:
    return FakeConsumer()


@pytest.fixture
def handler() -> Handler:
    return Handler()


def make(
    consumer: FakeConsumer,
    handler: consume.Handler,
    *,
    pipeline: int = 1,
    watchdog: Watchdog | None = None,
    metrics: Metrics | None = None,
    on_assigned: Callable[[set[TopicPartition]], Awaitable[None]] | None = None,
    commit_every: float = 0.0,
) -> consume.ConsumeLoop:
    return consume.ConsumeLoop(
        consumer,
        topics=[TOPIC],
        handle=handler,
        watchdog=watchdog or RecordingWatchdog(),
        batch_size=100,
        wait=0.005,
        pipeline=pipeline,
        on_assigned=on_assigned,
        metrics=metrics,
        commit_every=commit_every,
    )


@pytest.fixture
async def started(consumer: FakeConsumer, handler: Handler) -> AsyncIterator[Running]:
    running = Running(consumer, make(consumer, handler, pipeline=2))
    await running.listener.on_partitions_assigned({tp(0), tp(1)})
    yield running
    running.stop.set()
    for _ in range(500):  # complete what is still in flight (and what the loop hands over meanwhile)
        if running.task.done():
            break
        for future in handler.durable:
            if not future.done():
                future.set_result(True)
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(running.task, return_exceptions=True), 5)


async def test_a_later_batch_durable_first_is_committed_only_after_the_earlier_one(
    started: Running, consumer: FakeConsumer, handler: Handler
) -> None:
    consumer.fetches.put_nowait(fetched(0, 0, 10))
    consumer.fetches.put_nowait(fetched(0, 10, 5) | fetched(1, 0, 3))
    await until(lambda: len(handler.durable) == 2, "two batches in flight")
    handler.durable[1].set_result(True)
    await asyncio.sleep(0.02)
    assert consumer.commits == []  # the first batch's output is not durable yet
    handler.durable[0].set_result(True)
    await until(lambda: len(consumer.commits) == 2, "both commits")
    assert consumer.commits == [{tp(0): 10}, {tp(0): 15, tp(1): 3}]


async def test_a_batch_stopped_first_ends_the_loop_and_nothing_after_it_is_committed(
    started: Running, consumer: FakeConsumer, handler: Handler
) -> None:
    consumer.fetches.put_nowait(fetched(0, 0, 10))
    consumer.fetches.put_nowait(fetched(0, 10, 10))
    await until(lambda: len(handler.durable) == 2, "two batches in flight")
    handler.durable[1].set_result(True)
    handler.durable[0].set_result(False)
    await asyncio.wait_for(started.task, 5)  # ends without stop being set
    assert consumer.commits == []


async def test_pipeline_batches_stay_in_flight_while_the_next_is_handed_over_and_no_more(
    started: Running, consumer: FakeConsumer, handler: Handler
) -> None:
    for first in range(0, 40, 10):
        consumer.fetches.put_nowait(fetched(0, first, 10))
    await until(lambda: len(handler.durable) == 3, "two batches in flight and a third handed over")
    await asyncio.sleep(0.02)
    assert len(handler.durable) == 3  # the fourth is not fetched before the first is committed
    handler.durable[0].set_result(True)
    await until(lambda: len(handler.durable) == 4, "the fourth batch")
    assert consumer.commits == [{tp(0): 10}]


@pytest.mark.parametrize(
    "refusal",
    [CommitFailedError("rebalanced"), IllegalStateError("not assigned"), RebalanceInProgressError()],
    ids=["CommitFailedError", "IllegalStateError", "RebalanceInProgressError"],
)
async def test_a_commit_refused_by_a_rebalance_is_logged_and_the_loop_goes_on(
    consumer: FakeConsumer, handler: Handler, refusal: Exception
) -> None:
    metrics = Metrics("test")
    watchdog = RecordingWatchdog()
    running = Running(consumer, make(consumer, consume.inline(_stored), metrics=metrics, watchdog=watchdog))
    await running.listener.on_partitions_assigned({tp(0)})
    consumer.refusals.append(refusal)
    consumer.fetches.put_nowait(fetched(0, 0, 10))
    consumer.fetches.put_nowait(fetched(0, 10, 10))
    await until(lambda: len(consumer.commits) == 1, "the second batch's commit")
    await running.finish()  # no crash
    assert consumer.commits == [{tp(0): 20}]  # the second commit covers the first batch too
    assert metrics.counter("commits_refused") == 1
    assert watchdog.waits[-1] == 0  # nothing is left waiting: the refused batch is left to replay


async def _stored(batch: consume.Batch) -> bool:
    return True


async def test_a_revocation_waits_for_the_batches_in_flight_and_commits_them_first(
    consumer: FakeConsumer, handler: Handler
) -> None:
    running = Running(consumer, make(consumer, handler, pipeline=1))
    await running.listener.on_partitions_assigned({tp(0), tp(1)})
    consumer.fetches.put_nowait(fetched(0, 0, 10))
    consumer.fetches.put_nowait(fetched(1, 0, 5))
    await until(lambda: len(handler.durable) == 2, "two batches in flight")
    handler.durable[1].set_result(True)
    revoking = asyncio.create_task(running.listener.on_partitions_revoked({tp(0), tp(1)}))
    await asyncio.sleep(0.02)
    assert not revoking.done() and consumer.commits == []  # it waits for the first batch
    handler.durable[0].set_result(True)
    await asyncio.wait_for(revoking, 5)
    assert consumer.commits == [{tp(0): 10}, {tp(1): 5}]  # committed before the partitions went
    await running.listener.on_partitions_assigned({tp(0)})
    consumer.fetches.put_nowait(fetched(0, 10, 5))
    await until(lambda: len(handler.durable) == 3, "the batch of the new assignment")
    handler.durable[2].set_result(True)
    await running.finish()
    assert consumer.commits[2:] == [{tp(0): 15}]


async def test_no_batch_is_handed_over_before_on_assigned_has_finished(
    consumer: FakeConsumer, handler: Handler
) -> None:
    loaded = asyncio.Event()

    async def reload(assigned: set[TopicPartition]) -> None:
        await loaded.wait()

    running = Running(consumer, make(consumer, handler, on_assigned=reload))
    assigning = asyncio.create_task(running.listener.on_partitions_assigned({tp(0)}))
    consumer.fetches.put_nowait(fetched(0, 0, 10))  # aiokafka hands records out meanwhile
    await asyncio.sleep(0.03)
    assert handler.batches == []
    loaded.set()
    await assigning
    await until(lambda: len(handler.batches) == 1, "the batch after the reload")
    handler.durable[0].set_result(True)
    await running.finish()
    assert consumer.commits == [{tp(0): 10}]


async def test_the_watchdog_waits_on_fetched_records_until_their_commit(
    consumer: FakeConsumer, handler: Handler
) -> None:
    watchdog = RecordingWatchdog()
    running = Running(consumer, make(consumer, handler, pipeline=1, watchdog=watchdog))
    await running.listener.on_partitions_assigned({tp(0)})
    consumer.fetches.put_nowait(fetched(0, 0, 10))
    consumer.fetches.put_nowait(fetched(0, 10, 4))
    await until(lambda: len(handler.durable) == 2, "two batches")
    assert max(watchdog.waits) == 14 and watchdog.progressed == 0
    handler.durable[0].set_result(True)
    handler.durable[1].set_result(True)
    await until(lambda: len(consumer.commits) == 2, "the commits")
    await running.finish()
    assert watchdog.waits[-1] == 0 and watchdog.progressed == 2


async def test_a_handler_error_is_raised_and_nothing_in_flight_is_committed(
    started: Running, consumer: FakeConsumer, handler: Handler
) -> None:
    consumer.fetches.put_nowait(fetched(0, 0, 10))
    consumer.fetches.put_nowait(fetched(0, 10, 10))
    await until(lambda: len(handler.durable) == 2, "two batches")
    handler.durable[0].set_exception(RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(started.task, 5)
    assert consumer.commits == [] and handler.durable[1].cancelled()


async def test_with_commit_every_the_durable_batches_commit_together_and_all_before_the_end(
    consumer: FakeConsumer,
) -> None:
    watchdog = RecordingWatchdog()
    running = Running(consumer, make(consumer, consume.inline(_stored), watchdog=watchdog, commit_every=60))
    await running.listener.on_partitions_assigned({tp(0), tp(1)})
    consumer.fetches.put_nowait(fetched(0, 0, 10))
    await until(lambda: len(consumer.commits) == 1, "the first commit")  # the first is due at once
    consumer.fetches.put_nowait(fetched(0, 10, 10))
    consumer.fetches.put_nowait(fetched(0, 20, 10) | fetched(1, 0, 3))
    await until(lambda: consumer.fetches.empty(), "the fetches")
    await asyncio.sleep(0.03)
    assert consumer.commits == [{tp(0): 10}]  # durable, and not due for a minute
    assert watchdog.waits[-1] == 23  # waiting until committed
    await running.finish()
    assert consumer.commits == [{tp(0): 10}, {tp(0): 30, tp(1): 3}]  # the end commits them
    assert watchdog.waits[-1] == 0


async def test_with_commit_every_a_revocation_commits_what_is_durable_first(consumer: FakeConsumer) -> None:
    running = Running(consumer, make(consumer, consume.inline(_stored), commit_every=60))
    await running.listener.on_partitions_assigned({tp(0)})
    consumer.fetches.put_nowait(fetched(0, 0, 10))
    consumer.fetches.put_nowait(fetched(0, 10, 5))
    await until(lambda: consumer.fetches.empty() and len(consumer.commits) == 1, "the fetches")
    await asyncio.sleep(0.02)
    await running.listener.on_partitions_revoked({tp(0)})
    assert consumer.commits == [{tp(0): 10}, {tp(0): 15}]  # before the partitions go
    await running.finish()


async def test_with_commit_every_a_durable_batch_is_committed_once_due_without_another_batch(
    consumer: FakeConsumer,
) -> None:
    running = Running(consumer, make(consumer, consume.inline(_stored), commit_every=0.1))
    await running.listener.on_partitions_assigned({tp(0)})
    consumer.fetches.put_nowait(fetched(0, 0, 10))
    consumer.fetches.put_nowait(fetched(0, 10, 5))
    await until(lambda: len(consumer.commits) == 2, "the second commit, on an empty fetch")
    assert consumer.commits == [{tp(0): 10}, {tp(0): 15}]
    assert not running.task.done()
    await running.finish()


async def test_the_pacing_is_told_every_fetchs_record_count_empty_ones_too(consumer: FakeConsumer) -> None:
    class Pacing(FetchPacing):
        def __init__(self) -> None:
            self.counts: list[int] = []

        def fetched(self, count: int) -> None:
            self.counts.append(count)

    pacing = Pacing()
    loop = consume.ConsumeLoop(
        consumer, topics=[TOPIC], handle=consume.inline(_stored), watchdog=RecordingWatchdog(),
        batch_size=100, wait=0.005, pacing=pacing,
    )  # fmt: skip
    running = Running(consumer, loop)
    await running.listener.on_partitions_assigned({tp(0)})
    await until(lambda: 0 in pacing.counts, "an empty fetch")
    consumer.fetches.put_nowait(fetched(0, 0, 7))
    await until(lambda: 7 in pacing.counts, "the fetch of 7")
    await running.finish()
