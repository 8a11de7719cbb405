"""A topic the console follows in the background: one task, restarted after an error, cancelled on stop.

The dead-letter tail and the notifier's state are both read this way: Kafka may be away, or the
topic not made yet, when the console starts, so a failed read is logged and tried again soon.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from thermoflow.logs import get_logger

log = get_logger(__name__)

#: Seconds before a failed read of the topic is tried again.
RETRY_S: Final = 5.0


class TopicFollower:
    """Runs :meth:`_follow` in a task from :meth:`start` to :meth:`stop`, again after each failure."""

    topic: str
    name = "topic-follower"  # the task's name, and the log event's prefix

    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Kafka away or the topic not made yet: look again soon
                log.warning("topic_follow_retry", follower=self.name, topic=self.topic, error=str(exc)[:300])
            await asyncio.sleep(RETRY_S)
