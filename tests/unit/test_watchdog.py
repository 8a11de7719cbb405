"""The stall watchdog: waiting input without progress for too long is a stall; idle or retrying is not."""

from __future__ import annotations

import threading

from thermoflow.watchdog import Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_waiting_without_progress_past_the_limit_is_a_stall() -> None:
    clock = Clock()
    stalls: list[str] = []
    dog = Watchdog(component="sink", stall_after=10, now=clock, on_stall=lambda: stalls.append("x"))
    clock.now = 50.0
    dog.waiting(5)  # the wait starts now, not when the watchdog was made
    clock.now = 59.0
    assert not dog.check()
    clock.now = 60.5
    assert dog.check()
    assert stalls == ["x"]


def test_progress_and_retries_reset_the_wait_and_idle_is_never_a_stall() -> None:
    clock = Clock()
    dog = Watchdog(component="bridge", stall_after=10, now=clock, on_stall=lambda: None)
    dog.waiting(3)
    for _ in range(5):
        clock.now += 8
        dog.progress()
        assert dog.stalled_for() is None
    clock.now += 8
    dog.retrying("kafka down")
    clock.now += 8
    assert dog.stalled_for() is None
    dog.waiting(0)
    clock.now += 1000
    assert dog.stalled_for() is None


def test_zero_disables() -> None:
    clock = Clock()
    dog = Watchdog(component="store", stall_after=0, now=clock, on_stall=lambda: None)
    dog.waiting(1)
    clock.now = 1e9
    assert dog.stalled_for() is None
    dog.start()
    dog.stop()


def test_the_thread_catches_a_stall_while_the_caller_is_blocked() -> None:
    stalled = threading.Event()
    dog = Watchdog(component="bridge", stall_after=0.05, on_stall=stalled.set)
    dog.waiting(1)
    dog.start(interval=0.01)
    assert stalled.wait(10)  # nothing fed it: the thread notices on its own
    dog.stop()
