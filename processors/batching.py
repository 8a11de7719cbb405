"""The one adapter between faust and the processors' batches: one event per fetch.

Why: faust delivers every record on its own (a ``Message``, an ``Event``, a ``wait_first``
with two tasks, the stream's processors), about 60-80 µs of Python per record, which caps a
worker near 3,000-13,000 records/s however the agent batches afterwards (measured with
faust's public ``take``, ``take_events`` and ``noack``: ``bench/bench_faust_public.py``).
The threshold check needs hundreds of thousands per second, so for the processors' source
topics :class:`ChunkScheduler` hands faust *one* item per fetch (per topic): an aiokafka
``ConsumerRecord`` whose value is the fetch's chunks, each a partition's ``(TP, records)``.
A pass-through codec (:data:`CHUNK_SERIALIZER`) lets that value reach the agent as it is.
faust's machinery per item (a message, an event, a ``wait_first`` with two tasks, the stream's
queue and take buffer) is paid once per fetch, not once per partition of it: a fetch at a steady
5,000 readings/s holds a few readings from each of the twelve partitions.

At-least-once is the processors' own, not faust's: a chunked topic is declared without acks
(``app.topic(..., acks=False)``), so faust keeps no per-offset bookkeeping for it (no gaps
between items, no acked lists, no commit rounds), and :class:`Commits` commits each
partition's offset after the last chunk whose output Kafka has acked. Before this, faust's gap
bookkeeping (an ``IntervalTree`` merged at every chunk, each gap's offsets expanded into a list
at every commit, one commit round per chunk) cost about a sixth of a worker's CPU at a steady
5,000 readings/s.

It leans on what faust *does*, not only on what it promises, so it is pinned to the versions
it was written for and :func:`check_versions` refuses to start on others:

- ``Consumer.getmany`` passes the scheduler's items to ``_to_message``, which reads the
  ``ConsumerRecord`` fields; the item's ``TP`` and offset are its first chunk's (the drain loop
  drops an item below that partition's read offset, which a fetch never is: aiokafka drops what
  it fetched from before a seek);
- the drain loop (``Consumer._drain_messages``) adds gaps only for topics with acks, and
  ``Consumer.ack`` records offsets only for those: nothing of a chunked topic is committed by faust;
- ``Consumer._commit(offsets)`` (the transport's commit, the one faust's own commit ends in)
  commits the offsets it is given for the assigned partitions, and returns False when the
  group has already rebalanced;
- after a seek (a rebalance, a restart) a chunk that straddles the seek position is passed
  whole: more duplicates on replay than record by record, still at-least-once (alert ids are
  deterministic, so a replayed alert is the same alert).

A rebalance behaves as in faust: a fetch from before it is dropped (faust skips an item of an
older consumer generation; its offsets were not committed) and read again from the committed
offsets.

Batches are cut by :func:`take_batches`, faust's ``Stream.take_events`` with one change: a batch
closes ``within`` seconds after its oldest record reached Kafka (its record timestamp), not
``within`` seconds after the agent handed the batch before back. With faust's rule a record
that came while the agent worked waited that work and then a whole window. Cut by the record
timestamps, Kafka -> alert p99 at 20,000 readings/s went from 166-170 ms to 116-126 ms, for the
same CPU (3 runs each, alternating). It leans on faust's stream internals as ``take_events``
0.15.3 uses them (``add_processor``, ``_enable_passive``, ``current_event``,
``wait_for_stopped``, ``ack``, ``_active_agens``, ``_processors``), under the same version check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar, Final

from aiokafka.structs import ConsumerRecord
from faust.serializers import codecs
from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP
from mode.utils.aiter import aiter
from mode.utils.futures import notify

from thermoflow.settings import ConfigError

#: The value serializer of a chunked topic: the value is already the chunk's list of records.
CHUNK_SERIALIZER: Final = "thermoflow-chunk"

#: The versions this adapter was written for and tested with (pyproject.toml pins the same).
FAUST_VERSION: Final = "0.15.3"
AIOKAFKA_VERSIONS: Final = ((0, 11), (0, 15))  # at least, below: the bounds in pyproject.toml


class IncompatibleVersions(ConfigError):
    """faust or aiokafka is not a version :mod:`thermoflow.processors.batching` was written for."""


def check_versions(installed: Callable[[str], str] | None = None) -> None:
    """Refuse to start on a faust or aiokafka this adapter was not written for.

    Args:
        installed: the installed version of a distribution (``importlib.metadata.version``).

    Raises:
        IncompatibleVersions: naming the versions found, the ones expected and what to run
            before widening the pin.
    """
    lookup = installed or version
    found = {name: _installed(lookup, name) for name in ("faust-streaming", "aiokafka")}
    faust_ok = found["faust-streaming"] == FAUST_VERSION
    aiokafka_ok = found["aiokafka"] is not None and (
        AIOKAFKA_VERSIONS[0] <= _major_minor(found["aiokafka"]) < AIOKAFKA_VERSIONS[1]
    )
    if faust_ok and aiokafka_ok:
        return
    faust_found = found["faust-streaming"] or "not installed"
    aiokafka_found = found["aiokafka"] or "not installed"
    raise IncompatibleVersions(
        f"processors/batching.py was written for faust-streaming=={FAUST_VERSION} and"
        f" aiokafka>={_dotted(AIOKAFKA_VERSIONS[0])},<{_dotted(AIOKAFKA_VERSIONS[1])},"
        f" but found faust-streaming {faust_found} and aiokafka {aiokafka_found}. Install the tested set with"
        " `pip install -r requirements.lock`. Before widening the pin, check that the new faust's"
        " getmany still hands the scheduler's items to _to_message, Consumer._drain_messages and"
        " Consumer.ack still keep no offsets of a topic without acks, and Consumer._commit(offsets)"
        " still commits what it is given, then run `pytest tests/unit/processors"
        " tests/integration/processors tests/e2e` and `python bench/bench_processors.py`, and update"
        " FAUST_VERSION / AIOKAFKA_VERSIONS in processors/batching.py with the pins in pyproject.toml"
        " (`make lock`)."
    )


def _major_minor(text: str) -> tuple[int, ...]:
    """``(0, 14)`` for ``"0.14.0"``; a part that is not a number counts as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in text.split(".")[:2])


def _dotted(numbers: tuple[int, ...]) -> str:
    return ".".join(map(str, numbers))


def _installed(lookup: Callable[[str], str], name: str) -> str | None:
    try:
        return lookup(name)
    except PackageNotFoundError:
        return None


class _PassThrough(codecs.Codec):
    """A codec that leaves a value as it is: a chunk's value is already its records."""

    def _loads(self, s: Any) -> Any:
        return s

    def _dumps(self, s: Any) -> Any:
        return s


codecs.register(CHUNK_SERIALIZER, _PassThrough())


#: One partition's records of a fetch: its TP and aiokafka's raw records, in offset order.
Chunk = tuple[TP, Sequence[Any]]


class ChunkScheduler(DefaultSchedulingStrategy):
    """faust's ``ConsumerScheduler``, handing on each fetch's chunks of a topic of ``topics`` as one record.

    faust builds the scheduler itself, without arguments: :meth:`for_topics` makes the class
    to give it (``faust.App(..., ConsumerScheduler=ChunkScheduler.for_topics(names))``).
    Records of other topics go through faust's round robin, one by one, as usual: a table's
    changelog topic, say.
    """

    topics: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def for_topics(cls, topics: Iterable[str]) -> type[ChunkScheduler]:
        """The scheduler class delivering the named topics in chunks."""
        return type("ChunkScheduler", (cls,), {"topics": frozenset(topics), "__doc__": cls.__doc__})

    def iterate(self, records: Mapping[TP, list[ConsumerRecord]]) -> Iterator[tuple[TP, Any]]:
        """The items faust's drain loop delivers: one per topic of ``topics`` with records in
        this fetch, then the other topics' records one by one."""
        chunked: dict[str, list[Chunk]] = {}
        others = {}
        for tp, chunk in records.items():
            if tp.topic not in self.topics:
                others[tp] = chunk
            elif chunk:
                chunked.setdefault(tp.topic, []).append((tp, chunk))
        for chunks in chunked.values():
            yield chunks[0][0], self.as_record(chunks)
        if others:
            yield from super().iterate(others)

    @staticmethod
    def as_record(chunks: Sequence[Chunk]) -> ConsumerRecord:
        """One record standing for a fetch's ``chunks`` of one topic: its value the chunks, its
        partition and offset the first chunk's (its last record's offset).

        The chunks' records are aiokafka's own (:func:`thermoflow.aiokafka_fetch.deliver_raw_records`):
        offset, key, value, headers and timestamp, but no topic or partition, which are their
        chunk's ``TP``'s.
        """
        tp, first = chunks[0]
        last = first[-1]
        return ConsumerRecord(
            topic=tp.topic,
            partition=tp.partition,
            offset=last.offset,
            timestamp=last.timestamp,
            timestamp_type=last.timestamp_type,
            key=None,
            value=chunks,
            checksum=None,
            serialized_key_size=0,
            serialized_value_size=0,  # faust reads it nowhere; a sum would be a Python step per record
            headers=(),
        )


class Commits:
    """The offsets of the chunked topics a worker may commit, and their commits.

    A chunk is *done* once its output is acked by Kafka (and, for a stateful function, the
    state it changed is stored): :meth:`done` then moves its partition's next offset past the
    chunk's last record. :meth:`commit` commits the done offsets that moved since the last
    commit, for the partitions the worker still owns. A partition's chunks are processed in
    order, so everything below a done offset is done too.
    """

    def __init__(self) -> None:
        self._done: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}

    def done(self, chunks: Iterable[Chunk]) -> None:
        """These chunks (of :class:`ChunkScheduler` items) are done."""
        done = self._done
        for tp, records in chunks:
            after = records[-1].offset + 1
            if after > done.get(tp, -1):
                done[tp] = after

    def forget(self, tps: Iterable[TP]) -> None:
        """These partitions went to another worker: their next owner commits them."""
        for tp in tps:
            self._done.pop(tp, None)
            self._committed.pop(tp, None)

    def pending(self, assigned: Collection[TP]) -> dict[TP, int]:
        """The done offsets not committed yet, of the partitions in ``assigned``."""
        committed = self._committed
        return {
            tp: offset
            for tp, offset in self._done.items()
            if tp in assigned and offset > committed.get(tp, -1)
        }

    async def commit(self, consumer: Any) -> bool:
        """Commit the pending offsets through faust's consumer (``app.consumer``); False if
        there were none, or the group rebalanced meanwhile (the next owner reads them again)."""
        offsets = self.pending(consumer.assignment())
        if not offsets:
            return False
        committed = bool(await consumer._commit(offsets))
        if committed:
            self._committed.update(offsets)
        return committed


def batch_timeout(first_at: float | None, now: float, within: float) -> float:
    """Seconds to wait before cutting the batch whose oldest record arrived at ``first_at``.

    ``within`` after that arrival, and at least a tenth of ``within`` from ``now``: a record
    that is already old (a backlog, a slow batch before) is cut soon, but not before the fetches
    queued behind it are in. With no record yet, up to ``within``, to look again.
    """
    if first_at is None:
        return within
    return max(within / 10, first_at + within - now)


def arrived_at(chunks: Sequence[Chunk], now: float, within: float, *, wall: float) -> float:
    """When (on the clock of ``now``) the oldest record of a fetch's ``chunks`` reached Kafka.

    Read from the record timestamps (milliseconds, the wall clock ``wall`` is compared with), a
    chunk's first record being its oldest, and taken as no earlier than ``within`` ago and no
    later than ``now``: a producer clock ahead of this one counts the fetch as just arrived (faust's
    rule), one behind or a backlog as due, never worse.
    """
    stamps: list[int] = [records[0].timestamp for _, records in chunks if records]
    if not stamps:
        return now
    return now - min(max(wall - min(stamps) / 1000, 0.0), within)


def take_batches(stream: Any, max_: int, within: float) -> AsyncIterator[list[Any]]:
    """faust's ``Stream.take_events(max_, within)`` (0.15.3), but each batch is cut ``within``
    seconds after its oldest record reached Kafka (:func:`arrived_at`, :func:`batch_timeout`), or
    at ``max_`` items (fetches). Like faust's, the generator is registered with the stream, which
    closes it when it stops.
    """
    batches = _take_batches(stream, max_, within)
    stream._active_agens.add(batches)
    return batches


async def _take_batches(stream: Any, max_: int, within: float) -> AsyncIterator[list[Any]]:
    loop = asyncio.get_running_loop()
    events: list[Any] = []
    first_at: float | None = None  # when the next batch's oldest record reached Kafka; None: none yet
    arrived = asyncio.Event()  # the buffer got an item
    full = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming, first_at
        try:
            if consuming is not None:  # the batch before is still with the agent
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take buffer found current_event is None")
            at = arrived_at(value, loop.time(), within, wall=time.time())
            first_at = at if first_at is None else min(first_at, at)
            events.append(event)
            arrived.set()
            if len(events) >= max_:
                full.set()
                consumed.clear()
                await stream.wait(consumed)  # no more than max_ in a batch
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # as faust's take: the stream crashes, the worker restarts
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    enable_acks = stream.enable_acks
    stream.enable_acks = False  # the events are acked once the agent is done with them
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(
                arrived if first_at is None else full, timeout=batch_timeout(first_at, loop.time(), within)
            )
            if first_at is None:
                continue
            if not full.is_set() and loop.time() < first_at + within - 1e-3:
                continue
            consuming = loop.create_future()
            first_at = None
            arrived.clear()
            try:
                yield list(events)
            finally:
                for event in events:
                    await stream.ack(event)
                events.clear()
                notify(consuming)
                full.clear()
                consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)
