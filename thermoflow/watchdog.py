"""Stall detection: input is waiting, yet nothing has moved for too long.

A component that is alive but stuck (an ack that can never be sent, a batch that can never
commit) is worse than one that crashed: its process stays up, so nothing restarts it. Each
component feeds a :class:`Watchdog`: how much input waits, when progress moved (acks sent,
offsets committed), and when it is knowingly waiting on a dependency that is down (a retry
with backoff is not a stall). A thread of its own, not a task on the component's loop, checks
it, so a loop that is blocked is caught too. On a stall it logs ``component_stalled`` and ends
the process with :data:`EXIT_STALLED`; `thermoflow run` (or Kubernetes) starts it again, and
what was not acked or committed is delivered again (at least once).

    >>> clock = [0.0]
    >>> dog = Watchdog(component="bridge", stall_after=30.0, now=lambda: clock[0])
    >>> dog.waiting(10); clock[0] = 29.0; dog.stalled_for()
    >>> clock[0] = 31.0; dog.stalled_for()
    31.0
    >>> dog.progress(); dog.stalled_for()
    >>> dog.waiting(0); clock[0] = 100.0; dog.stalled_for()  # nothing waits: idle, not stalled
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Final

from thermoflow.logs import get_logger

log = get_logger(__name__)

#: The exit code of a process that stopped itself because it stalled.
EXIT_STALLED: Final = 3


def _exit_stalled() -> None:
    os._exit(EXIT_STALLED)  # the loop may be stuck: no clean shutdown is possible from here


class Watchdog:
    """Tracks waiting input and progress; :meth:`start` watches them from a daemon thread.

    Args:
        component: named in the log line.
        stall_after: seconds of waiting input without progress that count as a stall; 0 disables.
        now: the clock (monotonic seconds); injectable for tests.
        on_stall: what a stall does after the log line; the default ends the process.
    """

    def __init__(
        self,
        *,
        component: str,
        stall_after: float,
        now: Callable[[], float] = time.monotonic,
        on_stall: Callable[[], None] = _exit_stalled,
    ) -> None:
        self.component = component
        self.stall_after = stall_after
        self._now = now
        self._on_stall = on_stall
        self._waiting = 0
        self._moved_at = now()  # last progress, retry, or start of waiting
        self._retry_reason: str | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def waiting(self, count: int) -> None:
        """How much input waits now (held messages, fetched records); 0 means idle."""
        if count and not self._waiting:
            self._moved_at = self._now()  # the wait starts now, not at the last progress
        self._waiting = count

    def progress(self) -> None:
        """Progress moved: messages acked, offsets committed."""
        self._moved_at = self._now()
        self._retry_reason = None

    def retrying(self, reason: str) -> None:
        """A known transient wait (broker or database down, retried with backoff): not a stall."""
        self._moved_at = self._now()
        self._retry_reason = reason

    def stalled_for(self) -> float | None:
        """Seconds without progress while input waits, once past ``stall_after``; else None."""
        if not self.stall_after or not self._waiting:
            return None
        quiet = self._now() - self._moved_at
        return quiet if quiet > self.stall_after else None

    def check(self) -> bool:
        """Log and act on a stall; True if there was one."""
        quiet = self.stalled_for()
        if quiet is None:
            return False
        log.error(
            "component_stalled",
            component=self.component,
            waiting=self._waiting,
            seconds_without_progress=round(quiet, 1),
            stall_after=self.stall_after,
            exit_code=EXIT_STALLED,
        )
        self._on_stall()
        return True

    def start(self, *, interval: float = 1.0) -> None:
        """Check every ``interval`` seconds from a daemon thread until :meth:`stop`."""
        if not self.stall_after or self._thread is not None:
            return

        def watch() -> None:
            while not self._stopped.wait(interval):
                if self.check():
                    return

        self._thread = threading.Thread(target=watch, name=f"{self.component}-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
