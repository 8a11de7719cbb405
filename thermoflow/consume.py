"""The one consume-and-commit loop of thermoflow's consumers: the sink, the alert store, the notifier.

A component hands :class:`ConsumeLoop` a batch handler; the loop does the rest, the same way
for every one of them:

1. fetch a batch (``getmany``: up to ``batch_size`` records, waiting up to ``wait`` seconds);
2. hand it to the handler, which starts the batch's work and returns a :data:`Durable`: a
   future that completes once the batch's output is durable (rows committed, notifications sent
   and their state persisted, dead letters acked) with ``True``, or with ``False`` when the
   component was stopped first ("replay it": nothing after it is committed, the loop ends);
3. commit the offsets of exactly that batch once it is durable, batches in fetch order; with
   ``commit_every``, the offsets of the batches made durable meanwhile are committed at most that
   often, in one commit (each commit costs the consumer about half a millisecond of CPU; at a
   steady fleet's rate a batch per fetch made it a tenth of the sink's CPU). The later commit
   only means a longer replay after a crash, and the output is idempotent.

With ``pipeline=N``, N batches may still be on their way to durable while the next one is
fetched and handed over (the sink writes on N connections; the notifier persists a batch's
state while it dispatches the next), and their commits stay in fetch order, so no offset is
committed before the output of every record below it is durable. A handler without overlap
does its work and returns a settled future (:func:`inline`). The handler is called after
every fetch, an empty one too (count 0), so a component can do its periodic work there (the
store's sweep, the notifier's repeats).

Rebalances, one policy for all:

* Before partitions are revoked, the batches in flight are finished and committed (the
  generation is still valid then), so the next owner starts where this one stopped.
* A batch fetched before a revocation and not handed over yet is dropped (a guard: aiokafka
  returns no records while a rebalance is under way): the new assignment starts each
  partition at its committed offset, so its records come again, here or elsewhere.
* After an assignment, no batch is handed over before ``on_assigned`` has finished (the notifier
  reloads its state there): aiokafka hands out the new assignment's records meanwhile.
* A commit refused because a rebalance took the partitions (``CommitFailedError``,
  ``IllegalStateError``, ``RebalanceInProgressError``) is logged and the batch left to replay:
  its output is durable and idempotent, so the replay stores nothing twice. Never a crash.

The :class:`~thermoflow.watchdog.Watchdog` is fed here only: waiting = records fetched and not
committed, progress = a commit. Waiting out a database or broker that is down is the handler's
job, with :func:`thermoflow.db.retry_transient` (which tells the watchdog it is retrying);
aiokafka retries a commit's transient errors itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, RebalanceInProgressError

from thermoflow.aiokafka_fetch import FetchPacing, Record
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.watchdog import Watchdog

log = get_logger(__name__)

#: A fetch: each partition's records in offset order (raw or not: :mod:`thermoflow.aiokafka_fetch`).
Records = Mapping[TopicPartition, Sequence[Record]]

#: A completed batch resolves it to True (output durable: commit) or False (stopped first: replay).
Durable = asyncio.Future[bool]

#: Starts a batch's work (in fetch order, one at a time) and returns when its output will be durable.
Handler = Callable[["Batch"], Awaitable[Durable]]

#: What a commit raises when a rebalance took (or is taking) the partitions away.
REBALANCE_ERRORS: Final = (CommitFailedError, IllegalStateError, RebalanceInProgressError)


class Consumer(Protocol):
    """What the loop uses of an ``AIOKafkaConsumer`` (a fake with these three will do in tests)."""

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None: ...

    async def getmany(self, *, timeout_ms: int, max_records: int | None) -> Records: ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


@dataclass(frozen=True)
class Batch:
    """One fetch: its records by partition (each in offset order) and the offsets that commit them."""

    records: Records
    offsets: dict[TopicPartition, int]
    count: int

    @classmethod
    def of(cls, records: Records) -> Batch:
        """The batch of a ``getmany`` result.

        >>> Batch.of({}).count, Batch.of({}).offsets
        (0, {})
        """
        offsets = {tp: batch[-1].offset + 1 for tp, batch in records.items() if batch}
        return cls(records=records, offsets=offsets, count=sum(len(batch) for batch in records.values()))


def settled(durable: bool = True) -> Durable:
    """A :data:`Durable` that is already complete: the handler's work is done (or was stopped)."""
    future: Durable = asyncio.get_running_loop().create_future()
    future.set_result(durable)
    return future


def inline(handle: Callable[[Batch], Awaitable[bool]]) -> Handler:
    """A handler that finishes each batch before the next is fetched, from ``handle(batch) -> durable``."""

    async def start(batch: Batch) -> Durable:
        return settled(await handle(batch))

    return start


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, loop: ConsumeLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loop.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._loop.assigned(assigned)


class ConsumeLoop:
    """Fetch, hand over, commit once durable; see the module docstring.

    Subscribes ``consumer`` to ``topics`` with its own rebalance listener: build the consumer
    without topics. The component starts and stops the consumer around :meth:`run`.

    Args:
        consumer: an ``AIOKafkaConsumer`` in a group, with auto-commit off.
        topics: what to subscribe to.
        handle: the component's batch handler (:data:`Handler`).
        watchdog: the component's watchdog; started and stopped by :meth:`run`.
        batch_size: records per fetch at most.
        wait: seconds a fetch waits for records.
        pipeline: batches whose output may still be on its way while the next batch is fetched
            and handed over (0: each is finished before the next fetch); commits stay in order.
        on_assigned: runs after each assignment, before any batch of it is handed over.
        metrics: counts refused commits, times commits, and keeps the consumer lag per
            partition fetched from (``thermoflow_<component>_consumer_lag{group,topic,partition}``).
        group: the consumer group, as the lag's label.
        commit_every: seconds between offset commits at most often (0: after every batch). What
            is durable is always committed before a revocation and when the loop ends.
        pacing: told the record count of every fetch, to switch the consumer's fetches between
            gathering and idle (:class:`~thermoflow.aiokafka_fetch.FetchPacing`).
    """

    def __init__(
        self,
        consumer: Consumer,
        *,
        topics: Sequence[str],
        handle: Handler,
        watchdog: Watchdog,
        batch_size: int,
        wait: float,
        pipeline: int = 0,
        on_assigned: Callable[[set[TopicPartition]], Awaitable[None]] | None = None,
        metrics: Metrics | None = None,
        group: str = "",
        commit_every: float = 0.0,
        pacing: FetchPacing | None = None,
    ) -> None:
        if pipeline < 0:
            raise ValueError(f"pipeline must be 0 or more, not {pipeline}")
        if commit_every < 0:
            raise ValueError(f"commit_every must be 0 or more, not {commit_every}")
        self._consumer = consumer
        self._handle = handle
        self.watchdog = watchdog
        self._batch_size = batch_size
        self._wait_ms = round(wait * 1000)
        self._pipeline = pipeline
        self._on_assigned = on_assigned
        self._metrics = metrics
        self._group = group
        self._in_flight: deque[tuple[Batch, Durable]] = deque()
        self._commit_every = commit_every
        self._pacing = pacing
        self._durable: list[Batch] = []  # durable, in fetch order, offsets not committed yet
        self._next_commit = 0.0  # monotonic time from which the next commit is due
        # Held while a batch is handed over or a commit is made: a revocation waits for it, so
        # that commits stay in order and every batch handed over is finished before it.
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()  # set once the current assignment's on_assigned has run
        self._epoch = 0  # bumped at each revocation: which assignment a fetched batch belongs to
        self._uncommitted = 0
        self._halted = False  # a batch came back "stopped": nothing after it is committed
        self._failure: BaseException | None = None  # a handler's error met in a rebalance callback
        consumer.subscribe(list(topics), listener=_Listener(self))

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set (or a batch comes back stopped), then finish and commit."""
        self.watchdog.start()
        clean = False
        try:
            while not stop.is_set() and not self._halted:
                fetched = await self._consumer.getmany(timeout_ms=self._wait_ms, max_records=self._batch_size)
                epoch = self._epoch  # read before any await: the assignment these records came from
                batch = Batch.of(fetched)
                if self._pacing is not None:
                    self._pacing.fetched(batch.count)
                self._fetched(batch.count)
                self._report_lag(batch)
                if self._failure is not None:
                    raise self._failure
                if not await self._until_ready(stop):
                    self._forget(batch)
                    break
                async with self._lock:
                    if epoch != self._epoch:  # a revocation began since the fetch
                        self._drop(batch)
                        continue
                    self._in_flight.append((batch, await self._handle(batch)))
                    if not await self._make_room():
                        break
                    await self._commit_finished()
            async with self._lock:
                await self._drain()
            clean = True
        finally:
            if not clean:  # a handler's error (or a cancel): what is in flight is not committed
                for _, durable in self._in_flight:
                    durable.cancel()
                await asyncio.gather(*(durable for _, durable in self._in_flight), return_exceptions=True)
                self._in_flight.clear()
            self.watchdog.stop()

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        """Before a rebalance: finish and commit the batches in flight; hand over nothing fetched before."""
        self._epoch += 1
        self._ready.clear()
        try:
            async with self._lock:
                await self._drain()
        except Exception as exc:  # noqa: BLE001 - aiokafka would only log it: the loop raises it next
            self._failure = exc
        log.info("partitions_revoked", partitions=_names(revoked))

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        """After a rebalance: run ``on_assigned``, then let batches through again."""
        try:
            if self._on_assigned is not None:
                await self._on_assigned(assigned)
        finally:
            self._ready.set()
        log.info("partitions_assigned", partitions=_names(assigned))

    async def _until_ready(self, stop: asyncio.Event) -> bool:
        """Wait for the readiness gate; False if ``stop`` came first."""
        if self._ready.is_set():
            return True
        ready, stopped = asyncio.create_task(self._ready.wait()), asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        stopped.cancel()
        return self._ready.is_set()

    async def _make_room(self) -> bool:
        while len(self._in_flight) > self._pipeline:
            if not await self._finish_oldest():
                return False
        return True

    async def _commit_finished(self) -> None:
        while self._in_flight and self._in_flight[0][1].done():
            if not await self._finish_oldest():
                return
        if self._durable and time.monotonic() >= self._next_commit:  # due while none finished
            await self._commit_durable()

    async def _drain(self) -> None:
        while self._in_flight:
            if not await self._finish_oldest():
                return
        await self._commit_durable()

    async def _finish_oldest(self) -> bool:
        """Wait for the oldest batch and commit it; False if it was stopped (then nothing after it is)."""
        batch, durable = self._in_flight.popleft()
        if await durable:
            self._durable.append(batch)
            if time.monotonic() >= self._next_commit:
                await self._commit_durable()
            return True
        await self._commit_durable()  # the batches before this one are durable
        self._halted = True
        self._forget(batch)
        later = list(self._in_flight)
        self._in_flight.clear()
        await asyncio.gather(*(future for _, future in later), return_exceptions=True)
        for skipped, _ in later:
            self._forget(skipped)
        return False

    async def _commit_durable(self) -> None:
        """Commit the offsets of every durable batch not committed yet, in one commit."""
        if not self._durable:
            return
        batches, self._durable = self._durable, []
        self._next_commit = time.monotonic() + self._commit_every
        if len(batches) == 1:
            await self._commit(batches[0])
            return
        offsets: dict[TopicPartition, int] = {}
        for batch in batches:  # fetch order: a later batch's offset is the higher one
            offsets.update(batch.offsets)
        await self._commit(Batch(records={}, offsets=offsets, count=sum(batch.count for batch in batches)))

    async def _commit(self, batch: Batch) -> None:
        if batch.offsets:
            started = time.monotonic()
            try:
                await self._consumer.commit(batch.offsets)
                self.watchdog.progress()
            except REBALANCE_ERRORS as exc:
                # A rebalance took the partitions: the batch is durable, and its replay, here or
                # at the new owner, stores nothing twice.
                self._refused(batch, exc, event="offset_commit_refused", reason="rebalance")
            except KafkaError as exc:  # not retriable (aiokafka retried the others): replay too
                self._refused(batch, exc, event="offset_commit_failed", reason="kafka error")
            if self._metrics is not None:
                self._metrics.observe("commit", time.monotonic() - started)
        self._forget(batch)

    def _refused(self, batch: Batch, exc: KafkaError, *, event: str, reason: str) -> None:
        log.warning(event, reason=reason, error=f"{type(exc).__name__}: {exc}", records=batch.count,
                    partitions=_names(batch.offsets))  # fmt: skip
        if self._metrics is not None:
            self._metrics.count("commits_refused")
        self.watchdog.retrying(f"offset commit refused ({reason})")

    def _drop(self, batch: Batch) -> None:
        if batch.count:
            log.info("batch_dropped_after_rebalance", records=batch.count, partitions=_names(batch.offsets))
        self._forget(batch)

    def _report_lag(self, batch: Batch) -> None:
        """Per partition fetched from: records after this fetch up to the partition's end (per batch)."""
        highwater = getattr(self._consumer, "highwater", None)  # an AIOKafkaConsumer's; fakes lack it
        if self._metrics is None or highwater is None:
            return
        for tp, next_offset in batch.offsets.items():
            end = highwater(tp)
            if end is not None:
                self._metrics.gauge(
                    "consumer_lag", max(0, end - next_offset),
                    group=self._group, topic=tp.topic, partition=str(tp.partition),
                )  # fmt: skip

    def _fetched(self, count: int) -> None:
        self._uncommitted += count
        self.watchdog.waiting(self._uncommitted)

    def _forget(self, batch: Batch) -> None:
        """The batch waits no more: committed, or left to replay."""
        self._uncommitted -= batch.count
        self.watchdog.waiting(self._uncommitted)


def _names(partitions: Any) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)
