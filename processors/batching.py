"""The one adapter between faust and the processors' batches: one event per fetched partition chunk.

Why: faust delivers every record on its own (a ``Message``, an ``Event``, a ``wait_first``
with two tasks, the stream's processors), about 60-80 µs of Python per record, which caps a
worker near 3,000-13,000 records/s however the agent batches afterwards (measured with
faust's public ``take``, ``take_events`` and ``noack``: ``bench/bench_faust_public.py``).
The threshold check needs hundreds of thousands per second, so for the processors' source
topics :class:`ChunkScheduler` hands faust *one* item per fetched partition chunk: an
aiokafka ``ConsumerRecord`` whose value is the chunk's list of records and whose offset is
the chunk's last. A pass-through codec (:data:`CHUNK_SERIALIZER`) lets that value reach the
agent as it is.

Only public extension points are used: the ``ConsumerScheduler`` setting and
``faust.serializers.codecs.register``. At-least-once stays faust's own mechanism: its drain
loop sees the offsets between two chunk items as a *gap* (its bookkeeping for offsets it
does not deliver, as on compacted topics) and commits them once the item above them is
acked, which ``stream.take_events`` does after the agent has sent the chunk's output.

But it leans on what faust *does*, not on what it promises, so it is pinned to the versions
it was written for and :func:`check_versions` refuses to start on others:

- the drain loop (``Consumer._drain_messages``) adds a gap only ``if gap > 1 and r_offset``:
  a read offset of 0 counts as none (see :meth:`ChunkScheduler.split`);
- ``Consumer.getmany`` passes the scheduler's items to ``_to_message``, which reads the
  ``ConsumerRecord`` fields;
- after a seek (a rebalance, a restart) a chunk that straddles the seek position is passed
  whole: more duplicates on replay than record by record, still at-least-once (alert ids are
  deterministic, so a replayed alert is the same alert).

A rebalance behaves as in faust: a chunk of a revoked partition is dropped (its offsets were
not committed) and read again by the new owner.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar, Final

import aiokafka.errors
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.structs import ConsumerRecord
from faust.serializers import codecs
from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP

from thermoflow.settings import ConfigError

_value: Final = operator.attrgetter("value")

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
        " Consumer._drain_messages still adds a gap only `if gap > 1 and r_offset` and getmany still"
        " hands the scheduler's items to _to_message, then run `pytest tests/unit/processors"
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


class ChunkScheduler(DefaultSchedulingStrategy):
    """faust's ``ConsumerScheduler``, handing on each fetched chunk of ``topics`` as one record.

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
        """The items faust's drain loop delivers: chunks of ``topics``, then the other records."""
        others = {tp: chunk for tp, chunk in records.items() if tp.topic not in self.topics}
        for tp, chunk in records.items():
            if chunk and tp.topic in self.topics:
                for part in self.split(chunk):
                    yield tp, self.as_record(part, tp)
        if others:
            yield from super().iterate(others)

    @staticmethod
    async def settle(consumer: Any, events: Sequence[Any]) -> None:
        """Ack a processed batch of chunk events and have faust commit all of it now.

        faust 0.15.3's drain loop registers a gap up to *and including* the offset it
        delivers (``_add_gap(tp, r_offset + 1, offset)``), so each chunk's last offset is
        both in a gap and acked. The duplicate ends the run of consecutive offsets that
        ``Consumer._new_offset`` commits: one commit round moves a partition on by one chunk
        only. With a round every ``commit_interval`` and tens of chunks a second per
        partition, the committed offsets would fall further behind for as long as readings
        come in, and a restart would replay all of it. So: ack the batch's events (the ack
        ``take_events`` makes after the batch then finds them acked) and give faust one
        commit round per chunk of the partition with the most chunks in the batch, and one
        more for a round lost to a commit already under way. A round with nothing to commit
        costs no request.

        Args:
            consumer: the app's faust consumer (``app.consumer``).
            events: the batch's events, one per chunk.
        """
        for event in events:
            event.ack()
        per_partition = Counter(event.message.tp for event in events)
        for _ in range(max(per_partition.values(), default=0) + 1):
            await consumer.commit()

    @staticmethod
    def split(chunk: Sequence[ConsumerRecord]) -> Iterator[Sequence[ConsumerRecord]]:
        """The chunk, except that one starting at offset 1 gives its first record alone.

        faust's drain loop adds the gap below a delivered offset only ``if gap > 1 and
        r_offset``: after a lone record at offset 0 its read offset is 0, which counts as
        none, so a chunk 1..n would get no gap and its commit would wait for offsets 1..n-1
        for ever. Offset 1 on its own sets the read offset to 1, and the rest gets its gap.
        """
        if chunk[0].offset == 1 and len(chunk) > 1:
            yield chunk[:1]
            yield chunk[1:]
        else:
            yield chunk

    @staticmethod
    def as_record(chunk: Sequence[Any], tp: TP) -> ConsumerRecord:
        """One record standing for ``tp``'s chunk: its value the records, its offset the last one's.

        The chunk's records are aiokafka's own (see :func:`deliver_raw_records`): offset, key,
        value, headers and timestamp, but no topic or partition, which are ``tp``'s.
        """
        last = chunk[-1]
        return ConsumerRecord(
            topic=tp.topic,
            partition=tp.partition,
            offset=last.offset,
            timestamp=last.timestamp,
            timestamp_type=last.timestamp_type,
            key=None,
            value=chunk,
            checksum=None,
            serialized_key_size=0,
            serialized_value_size=sum(len(value) for value in map(_value, chunk) if value),
            headers=(),
        )


#: Topics whose fetched records reach the scheduler as aiokafka's raw records (deliver_raw_records).
_RAW_TOPICS: set[str] = set()
_unpack_consumer_records: Final = aiokafka_fetcher.PartitionRecords._unpack_records


def deliver_raw_records(topics: Iterable[str]) -> None:
    """Have aiokafka's fetcher hand on the records of ``topics`` as it decoded them, in this process.

    aiokafka wraps every fetched record in a ``ConsumerRecord`` (a dataclass of eleven fields,
    its headers copied to a tuple): 12-23% of a worker's time with every detector on. A chunked
    topic's records only ever reach :class:`ChunkScheduler`, which folds them into one item per
    chunk, and the batch decoder, which reads their offset, key, value and headers: the
    records of aiokafka's record batch (``DefaultRecord``) have all four, and the chunk's
    partition comes from its ``TP``. Other topics (and a read_committed consumer, which must
    skip aborted transactions) keep aiokafka's own unpacking. The replacement is aiokafka's
    ``PartitionRecords._unpack_records`` without the wrapping; pinned with the versions
    :func:`check_versions` accepts.
    """
    _RAW_TOPICS.update(topics)
    aiokafka_fetcher.PartitionRecords._unpack_records = _unpack_records


def _unpack_records(self: Any) -> Iterator[Any]:
    """aiokafka 0.14's ``PartitionRecords._unpack_records``, yielding raw records for ``_RAW_TOPICS``."""
    if self._tp.topic not in _RAW_TOPICS or self._isolation_level == aiokafka_fetcher.READ_COMMITTED:
        yield from _unpack_consumer_records(self)
        return
    records = self._records
    while records.has_next():
        batch = records.next_batch()
        if self._check_crcs and not batch.validate_crc():
            raise aiokafka.errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
        if not batch.is_control_batch:
            for record in batch:
                if record.offset < self.next_fetch_offset:  # a compressed batch fetched from its start
                    continue
                self.next_fetch_offset = record.offset + 1
                yield record
        self.next_fetch_offset = batch.next_offset
