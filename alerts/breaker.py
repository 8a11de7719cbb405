"""A circuit breaker per channel: a small pure state machine with the clock passed in.

closed --(``failures`` consecutive failures)--> open --(``reset_after`` elapsed)--> half-open
half-open lets one probe through: success closes it, failure opens it again.

Hand-written rather than a library because it is ~50 lines, must read an injected clock in
tests (purgatory and pybreaker read the wall clock), and holds no lock or I/O of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

BreakerState = Literal["closed", "open", "half-open"]


@dataclass
class CircuitBreaker:
    failures: int
    reset_after: float
    clock: Callable[[], float]
    state: BreakerState = "closed"
    consecutive_failures: int = 0
    opened_at: float = 0.0
    #: When it last left ``closed`` (kept through half-open probes that fail), None while closed:
    #: how long the channel has been broken, for the ``breaker_open`` pipeline alert.
    tripped_at: float | None = None
    successes: int = 0  # sends that went through: a closed breaker with none has proved nothing yet
    _probing: bool = field(default=False, repr=False)

    def allow(self) -> bool:
        """Whether a send may be attempted now (a half-open breaker lets exactly one through)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self.clock() - self.opened_at < self.reset_after:
                return False
            self.state = "half-open"
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    @property
    def probing(self) -> bool:
        """Whether a half-open breaker's one probe is in flight."""
        return self.state == "half-open" and self._probing

    def record_success(self) -> None:
        self.state = "closed"
        self.consecutive_failures = 0
        self._probing = False
        self.tripped_at = None
        self.successes += 1

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.state == "half-open" or self.consecutive_failures >= self.failures:
            if self.state != "open":
                self.opened_at = self.clock()
            if self.tripped_at is None:
                self.tripped_at = self.opened_at
            self.state = "open"
            self._probing = False
