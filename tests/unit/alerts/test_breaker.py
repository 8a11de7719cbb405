"""The circuit breaker's states on an injected clock."""

from __future__ import annotations

from tests.support.fakes import FakeClock
from thermoflow.alerts.breaker import BreakerState, CircuitBreaker


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state


def test_opens_after_consecutive_failures_and_probes_once_when_half_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, reset_after=30.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert state(breaker) == "closed"
    breaker.record_failure()
    assert state(breaker) == "open"
    assert not breaker.allow()
    clock.advance(29.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()  # the probe
    assert state(breaker) == "half-open"
    assert not breaker.allow()  # only one probe at a time
    breaker.record_failure()
    assert state(breaker) == "open"
    assert not breaker.allow()
    clock.advance(30)
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) == "closed"
    assert breaker.allow() and breaker.allow()


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failures=2, reset_after=1.0, clock=FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) == "closed"
