"""Routing, retries, the breaker and dead letters, with fake channels and a fake clock."""

from __future__ import annotations

from tests.support.fakes import FakeClock, RecordingChannel, RecordingDeadLetters, make_alert
from thermoflow.alerts.delivery import Dispatcher, RetryPolicy
from thermoflow.alerts.lifecycle import Policy
from thermoflow.alerts.notification import Notification
from thermoflow.alerts.routing import LogRoute, Routes, WebhookRoute
from thermoflow.alerts.tracker import IncidentTracker
from thermoflow.events import Severity


def _notifications(devices: int, *, severity: Severity = "critical") -> list[Notification]:
    tracker = IncidentTracker(Policy(resolve_after=60, repeat_interval=600))
    out: list[Notification] = []
    for d in range(devices):
        out += tracker.on_alert(make_alert(f"dev-{d}", 0.0, severity=severity), now=0.0)
    return out


def _dispatcher(
    channels: dict[str, RecordingChannel], routes: Routes, clock: FakeClock, dead: RecordingDeadLetters
) -> Dispatcher:
    return Dispatcher(
        channels,
        routes,
        dead_letters=dead,
        retry=RetryPolicy(attempts=3, backoff=1.0, backoff_max=4.0),
        breaker_failures=5,
        breaker_reset=30.0,
        clock=clock,
        sleep=clock.sleep,
    )


ROUTES = Routes(
    channels={
        "log": LogRoute(type="log"),
        "pager": WebhookRoute(type="webhook", url="http://x", severities=["critical"]),
    }
)


async def test_routes_by_severity() -> None:
    clock, dead = FakeClock(), RecordingDeadLetters()
    log, pager = RecordingChannel("log"), RecordingChannel("pager")
    dispatcher = _dispatcher({"log": log, "pager": pager}, ROUTES, clock, dead)
    await dispatcher.dispatch(_notifications(3, severity="warning") + _notifications(2))
    assert len(log.sent) == 5
    assert len(pager.sent) == 2 and {n.severity for n in pager.sent} == {"critical"}


async def test_a_transient_failure_is_retried_with_backoff_and_delivered_once() -> None:
    clock, dead = FakeClock(), RecordingDeadLetters()
    pager = RecordingChannel("pager", failures=2)
    dispatcher = _dispatcher({"log": RecordingChannel("log"), "pager": pager}, ROUTES, clock, dead)
    start = clock()
    result = await dispatcher.dispatch(_notifications(1))
    assert pager.attempts == 3 and len(pager.sent) == 1
    assert result.delivered["pager"] == 1 and not dead.letters
    assert 0 <= clock() - start <= 1.0 * 2 + 1.0 * 4  # slept between attempts, within the jittered caps


async def test_a_permanent_failure_is_not_retried_and_is_dead_lettered_with_the_reason() -> None:
    clock, dead = FakeClock(), RecordingDeadLetters()
    pager = RecordingChannel("pager", failures=1, retryable=False)
    dispatcher = _dispatcher({"log": RecordingChannel("log"), "pager": pager}, ROUTES, clock, dead)
    await dispatcher.dispatch(_notifications(1))
    assert pager.attempts == 1
    assert [(channel, "fake channel failure" in reason) for _, channel, reason in dead.letters] == [
        ("pager", True)
    ]


async def test_a_dead_channel_opens_its_breaker_the_others_deliver_and_nothing_is_lost() -> None:
    clock, dead = FakeClock(), RecordingDeadLetters()
    log, pager = RecordingChannel("log"), RecordingChannel("pager", down=True)
    dispatcher = _dispatcher({"log": log, "pager": pager}, ROUTES, clock, dead)
    notifications = _notifications(20)
    await dispatcher.dispatch(notifications)

    assert len(log.sent) == 20  # the healthy channel got everything
    assert dispatcher.breakers["pager"].state == "open", "a dead channel opens its breaker"
    assert pager.attempts < 20 * 3  # the open breaker stopped the hammering
    assert dead.keys("pager") == {n.idempotency_key for n in notifications}  # every one accounted for
    assert any("circuit breaker of channel pager is open" in reason for _, _, reason in dead.letters)

    # Back up: after the reset time a probe goes through and closes the breaker.
    pager.down = False
    clock.advance(31)
    more = _notifications(25)[20:]
    await dispatcher.dispatch(more)
    assert dispatcher.breakers["pager"].consecutive_failures == 0
    assert [n.idempotency_key for n in pager.sent] == [n.idempotency_key for n in more]


async def test_one_incidents_notifications_reach_a_channel_in_order() -> None:
    tracker = IncidentTracker(Policy(resolve_after=60, repeat_interval=600))
    batch = tracker.on_alert(make_alert("f", 0.0), now=0.0)
    batch += tracker.on_alert(make_alert("f", 1.0, severity="critical"), now=1.0)
    batch += tracker.on_watermark(partition=-1, watermark=100.0, now=100.0)
    clock, dead = FakeClock(), RecordingDeadLetters()
    log = RecordingChannel("log", failures=1)  # the first send fails and is retried
    dispatcher = _dispatcher({"log": log, "pager": RecordingChannel("pager")}, ROUTES, clock, dead)
    await dispatcher.dispatch(batch)
    assert [n.transition for n in log.sent] == ["fire", "escalate", "resolve"]
