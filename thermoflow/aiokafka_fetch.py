"""What thermoflow's consumers use of aiokafka's fetcher beyond its public API, in one place.

**Idle pacing** (:class:`FetchPacing`). A consumer's fetch waits at the broker up to
``fetch_wait`` for ``kafka_fetch_min_bytes``, so that under load a batch carries a fetch wait's
worth of records instead of each record that happened to be there. Idle, the same wait makes
the consumer ask 13 times a second for nothing, and each empty fetch (a request and a response
for every partition, encoded and decoded in Python by aiokafka) cost the sink about 0.9 ms:
1.0-1.3% of a core per consumer, at rest. Once a ``getmany`` has come back empty (nothing for
the consume loop's whole wait, several fetch waits), the pacing asks the broker for the first
byte instead (``fetch_min_bytes`` 1) and lets it wait up to :data:`IDLE_FETCH_WAIT`: idle, one
fetch every two seconds; and the first record after a pause comes back at once, without the
fetch wait's delay. The first fetch with records switches back.
aiokafka reads both values from its fetcher each time it builds a fetch request.

**Raw records** (:func:`deliver_raw_records`). aiokafka wraps every fetched record in a
``ConsumerRecord`` (a dataclass of eleven fields, its headers copied to a tuple): 0.6 µs per
record. The consumers read four of its fields, ``offset``, ``key``, ``value`` and ``headers``
(the partition comes from the fetch's mapping), and aiokafka's own records (``DefaultRecord``)
have all four (:class:`Record`): for the topics given, the fetcher hands those on as they are.
The processors do the same for theirs (``processors/batching.py``); installed after them, this
keeps their topics theirs.

Neither is public, so :func:`check_version` pins the aiokafka versions this was written for:
on another one the pacing does nothing and the records stay ``ConsumerRecord``s (with a
warning), which the consumers read the same way.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Protocol

import aiokafka.errors
from aiokafka.consumer import fetcher as aiokafka_fetcher

from thermoflow.logs import get_logger

log = get_logger(__name__)

#: Seconds an idle consumer's fetch may wait at the broker (it returns at the first record).
IDLE_FETCH_WAIT: Final = 2.0

#: The aiokafka versions (major, minor) whose fetcher this module knows: from, up to (excluded).
AIOKAFKA_VERSIONS: Final = ((0, 11), (0, 15))


class Record(Protocol):
    """What a consumer reads of a fetched record: a raw ``DefaultRecord`` or a ``ConsumerRecord``."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class _Consumer(Protocol):
    _fetcher: Any


def check_version(installed: str | None = None) -> bool:
    """Whether the installed aiokafka (or ``installed``) is one this module was written for.

    >>> check_version("0.14.0"), check_version("0.15.1"), check_version("1.0")
    (True, False, False)
    """
    found = installed if installed is not None else importlib.metadata.version("aiokafka")
    try:
        major_minor = tuple(int(part) for part in found.split(".")[:2])
    except ValueError:
        return False
    return AIOKAFKA_VERSIONS[0] <= major_minor < AIOKAFKA_VERSIONS[1]


class FetchPacing:
    """Switches a started consumer's fetches between gathering (busy) and waiting for the first byte (idle).

    Call :meth:`fetched` with the record count of every fetch (``getmany``) the consumer returns.

    Args:
        consumer: an ``AIOKafkaConsumer`` (its fetcher exists once it is started).
        min_bytes: what a busy fetch waits for (``kafka_fetch_min_bytes``).
        wait: seconds a busy fetch waits at most (``fetch_wait``).
        idle_wait: seconds an idle fetch waits at most for its first byte.
    """

    def __init__(
        self, consumer: Any, *, min_bytes: int, wait: float, idle_wait: float = IDLE_FETCH_WAIT
    ) -> None:
        self._consumer: _Consumer = consumer
        self._busy = (min_bytes, round(wait * 1000))
        self._idle = (1, round(idle_wait * 1000))
        self._enabled = check_version()
        if not self._enabled:
            log.warning(
                "fetch_pacing_disabled",
                reason=f"aiokafka {importlib.metadata.version('aiokafka')} is not one of the versions"
                " thermoflow/aiokafka_fetch.py was written for: idle consumers fetch as often as busy ones",
            )
        self.idle = False

    def fetched(self, count: int) -> None:
        """A fetch came back with ``count`` records: none, the consumer is idle; some, it is busy."""
        idle = count == 0
        if idle == self.idle or not self._enabled:
            return
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is None:  # not started (or stopped): nothing to pace
            return
        self.idle = idle
        fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = self._idle if idle else self._busy


#: Topics whose fetched records the fetcher hands on raw, in this process (:func:`deliver_raw_records`).
_RAW_TOPICS: set[str] = set()
_unpack_wrapped: Callable[[Any], Iterator[Any]] | None = None  # the unpacking installed before ours


def deliver_raw_records(topics: Iterable[str]) -> None:
    """Have aiokafka's fetcher hand on the records of ``topics`` as it decoded them (:class:`Record`).

    Other topics, and a read_committed consumer (which must skip aborted transactions), keep
    the unpacking that was installed before. Does nothing (records stay ``ConsumerRecord``s) on
    an aiokafka this was not written for.
    """
    global _unpack_wrapped
    if not check_version():
        log.warning("raw_records_disabled", reason="aiokafka is not a version aiokafka_fetch.py knows")
        return
    _RAW_TOPICS.update(topics)
    installed = aiokafka_fetcher.PartitionRecords._unpack_records
    if installed is not _unpack_raw:  # first call, or another unpacking was installed over ours since
        _unpack_wrapped = installed
        aiokafka_fetcher.PartitionRecords._unpack_records = _unpack_raw


def _unpack_raw(self: Any) -> Iterator[Any]:
    """aiokafka 0.14's ``PartitionRecords._unpack_records``, yielding raw records for ``_RAW_TOPICS``."""
    if self._tp.topic not in _RAW_TOPICS or self._isolation_level == aiokafka_fetcher.READ_COMMITTED:
        assert _unpack_wrapped is not None
        yield from _unpack_wrapped(self)
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
