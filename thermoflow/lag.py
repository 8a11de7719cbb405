"""One consumer group's lag on one topic, read from Kafka as KEDA's Kafka scaler reads it.

`thermoflow run --autoscale` asks this before each decision of :mod:`thermoflow.autoscale`.
"""

from __future__ import annotations

import contextlib

from thermoflow.observe import KafkaObserver
from thermoflow.settings import ThermoflowSettings


class GroupLag:
    """A :class:`~thermoflow.observe.KafkaObserver`, started on first use and afresh after a failure."""

    def __init__(self, settings: ThermoflowSettings, *, timeout: float = 10.0) -> None:
        self._settings = settings
        self._timeout = timeout
        self._observer: KafkaObserver | None = None

    async def _started(self) -> KafkaObserver:
        """The observer, started now if need be: Kafka may be away when `thermoflow run` starts."""
        if self._observer is None:
            observer = KafkaObserver(self._settings, timeout=self._timeout)
            try:
                await observer.start()
            except BaseException:
                await _close(observer)
                raise
            self._observer = observer
        return self._observer

    async def close(self) -> None:
        if self._observer is not None:
            await _close(self._observer)
            self._observer = None

    async def lag(self, group: str, topic: str) -> int:
        """Records of ``topic`` that ``group`` has not committed yet (:meth:`KafkaObserver.topic_lag`)."""
        try:
            return await (await self._started()).topic_lag(group, topic)
        except Exception:
            await self.close()  # start afresh next time: a client that failed may stay broken
            raise


async def _close(observer: KafkaObserver) -> None:
    with contextlib.suppress(Exception):  # a client that never started has nothing to close
        await observer.close()
