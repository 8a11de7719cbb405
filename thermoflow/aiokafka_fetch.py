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

They are not public, so :func:`check_version` pins the aiokafka versions this was written
for: on another one the pacing does nothing (with a warning).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, Final, Protocol

from thermoflow.logs import get_logger

log = get_logger(__name__)

#: Seconds an idle consumer's fetch may wait at the broker (it returns at the first record).
IDLE_FETCH_WAIT: Final = 2.0

#: The aiokafka versions (major, minor) whose fetcher this module knows: from, up to (excluded).
AIOKAFKA_VERSIONS: Final = ((0, 11), (0, 15))


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
