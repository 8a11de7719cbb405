"""The pipeline's own alerts, decided without any service: debounced, raised once, cleared once over,
with ids that do not change when a send is retried, and incidents the lifecycle opens and resolves."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest
from aiokafka.errors import KafkaTimeoutError
from pydantic import ValidationError

from tests.support.fakes import FakeClock
from thermoflow.alerts.breaker import CircuitBreaker
from thermoflow.alerts.kafka_io import checked_clear
from thermoflow.alerts.lifecycle import Policy
from thermoflow.alerts.notification import headline
from thermoflow.alerts.pipeline_checks import (
    PipelineCheck,
    PipelineEvent,
    RateWindow,
    breaker_open_for,
    lag_rule,
)
from thermoflow.alerts.pipeline_watch import PipelineWatch
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.alerts.tracker import IncidentTracker
from thermoflow.events import CLEAR_HEADERS, AlertEvent, Clear, decode_alert
from thermoflow.ingest.settings import IngestSettings
from thermoflow.processors.settings import ProcessorSettings

T0 = 1_764_218_400.0
POLICY = Policy(resolve_after=60.0, repeat_interval=3_600.0)


def lag_check(*, limit: float = 1_000.0, hold: float = 60.0) -> PipelineCheck:
    return PipelineCheck(
        rule_id=lag_rule("thermoflow-sink"), condition="consumer_lag", metric="lag", severity="warning",
        limit=limit, hold=hold,
    )  # fmt: skip


def feed(
    check: PipelineCheck, samples: Sequence[tuple[float, float | None]], *, left_open: bool = False
) -> list[PipelineEvent]:
    """Measurements every few seconds; each event returned is sent (acked) at once."""
    events = []
    for offset, value in samples:
        event = check.observe(now=T0 + offset, value=value, left_open=left_open)
        if event is not None:
            check.sent(event)
            events.append(event)
    return events


def every(seconds: float, start: float, end: float, value: float | None) -> list[tuple[float, float | None]]:
    count = int((end - start) / seconds)
    return [(start + i * seconds, value) for i in range(count)]


def test_lag_that_drains_within_the_window_does_not_page() -> None:
    check = lag_check()
    burst = every(10, 0, 50, 50_000.0) + every(10, 50, 300, 0.0)  # far above, for 50 s only
    assert feed(check, burst) == []


def test_lag_above_for_a_window_raises_one_alert_and_clears_after_a_window_below() -> None:
    check = lag_check()
    samples = every(10, 0, 200, 5_000.0) + every(10, 200, 400, 10.0)
    events = feed(check, samples)
    assert [type(e) for e in events] == [AlertEvent, Clear]
    alert, clear = events
    assert isinstance(alert, AlertEvent) and isinstance(clear, Clear)
    assert (alert.device_id, alert.condition, alert.rule_id) == (
        "pipeline",
        "consumer_lag",
        "consumer-lag/thermoflow-sink",
    )
    assert alert.reading_ts == T0  # when the lag first went over, not when the alert was decided
    assert alert.detected_at == T0 + 60
    assert (alert.value, alert.threshold, alert.severity) == (5_000.0, 1_000.0, "warning")
    assert clear.since == alert.reading_ts  # it ends that alert's incident
    assert clear.cleared_at == T0 + 200  # the first check below the limit
    assert clear.detected_at == T0 + 260


def test_a_dip_below_the_limit_restarts_the_window() -> None:
    check = lag_check()
    samples = [(0, 5_000.0), (30, 5_000.0), (50, 10.0), (70, 5_000.0), (120, 5_000.0), (130, 5_000.0)]
    [alert] = feed(check, samples)
    assert isinstance(alert, AlertEvent) and alert.reading_ts == T0 + 70


def test_an_unsent_alert_comes_again_with_the_same_id() -> None:
    check = lag_check(hold=0.0)
    first = check.observe(now=T0, value=5_000.0)
    again = check.observe(now=T0 + 10, value=7_000.0)  # the first send failed: not marked sent
    assert isinstance(first, AlertEvent) and isinstance(again, AlertEvent)
    assert again.alert_id == first.alert_id
    check.sent(again)
    assert check.observe(now=T0 + 20, value=9_000.0) is None


def test_no_measurement_is_no_verdict_and_keeps_the_runs() -> None:
    check = lag_check()
    [alert] = feed(check, [(0, 5_000.0), (20, None), (40, None), (60, 5_000.0)])
    assert isinstance(alert, AlertEvent) and alert.reading_ts == T0


def test_a_new_watcher_clears_what_an_earlier_one_left_open_and_nothing_else() -> None:
    assert feed(lag_check(), every(10, 0, 300, 0.0)) == []  # nothing open: nothing to say
    check = lag_check()
    assert check.observe(now=T0, value=0.0, left_open=True) is None  # not yet below for a window
    clear = check.observe(now=T0 + 60, value=0.0, left_open=True)
    assert isinstance(clear, Clear)
    assert clear.since == clear.cleared_at == T0  # ends the incident opened before this watcher began


def test_the_incident_fires_once_and_resolves_on_the_clear_in_the_notifiers_lifecycle() -> None:
    check = lag_check()
    events = feed(check, every(10, 0, 200, 5_000.0) + every(10, 200, 300, 0.0))
    tracker = IncidentTracker(POLICY)
    transitions = []
    for event in events:
        if isinstance(event, AlertEvent):
            found = tracker.on_alert(event, now=event.detected_at)
        else:
            found = tracker.on_clear(checked_clear(event), now=event.detected_at)
        transitions += [(n.transition, n.device_id, n.resolved_at) for n in found]
    # Quiet for far longer than resolve_after in between: only the clear ends it.
    assert transitions == [("fire", "pipeline", None), ("resolve", "pipeline", T0 + 200)]


def test_a_pipeline_clear_is_a_valid_clear_record() -> None:
    clear = Clear(device_id="pipeline", rule_id="breaker-open/hook", condition="breaker_open", since=T0,
                  cleared_at=T0 + 5, detected_at=T0 + 6)  # fmt: skip
    assert checked_clear(clear) is clear


def test_one_dead_letter_is_a_blip_a_stream_of_them_alerts() -> None:
    check = PipelineCheck(rule_id="deadletter-rate/dlq", condition="deadletter_rate", metric="dead_letters",
                          severity="warning", limit=10.0)  # fmt: skip
    rate = RateWindow(window=60.0)

    def run(totals: Sequence[tuple[float, int]]) -> list[PipelineEvent]:
        events = []
        for offset, total in totals:
            event = check.observe(now=T0 + offset, value=rate.observe(now=T0 + offset, total=total))
            if event is not None:
                check.sent(event)
                events.append(event)
        return events

    assert run([(t, 0) for t in range(0, 60, 10)] + [(t, 1) for t in range(60, 200, 10)]) == []
    # Then 5 dead letters every 10 s (30/min) for a minute, then none.
    stream = [(200 + i * 10, 1 + 5 * (i + 1)) for i in range(6)] + [(260 + i * 10, 31) for i in range(1, 10)]
    events = run(stream)
    assert [type(e) for e in events] == [AlertEvent, Clear]
    alert = events[0]
    assert isinstance(alert, AlertEvent) and alert.value > 10.0


def test_rate_window_starts_over_when_the_counter_goes_back() -> None:
    rate = RateWindow(window=60.0)
    assert rate.observe(now=0.0, total=500) is None
    assert rate.observe(now=60.0, total=560) == 60.0
    assert rate.observe(now=70.0, total=3) is None  # the topic was recreated: a new window
    assert rate.observe(now=130.0, total=3) == 0.0


def test_a_breaker_stays_tripped_through_failed_probes_until_a_delivery() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, reset_after=30.0, clock=clock)
    assert breaker_open_for(tripped_at=breaker.tripped_at, successes=breaker.successes, now=clock()) is None
    breaker.record_failure()
    breaker.record_failure()
    tripped = clock()
    clock.advance(30)
    assert breaker.allow() and breaker.state == "half-open"
    breaker.record_failure()  # the probe failed: open again, still broken since the first trip
    clock.advance(45)
    assert breaker.tripped_at == tripped
    assert breaker_open_for(tripped_at=breaker.tripped_at, successes=breaker.successes, now=clock()) == 75.0
    clock.advance(30)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.tripped_at is None
    assert breaker_open_for(tripped_at=breaker.tripped_at, successes=breaker.successes, now=clock()) == 0.0


def test_a_breaker_open_longer_than_the_setting_raises_from_its_trip_time() -> None:
    check = PipelineCheck(rule_id="breaker-open/hook", condition="breaker_open", metric="breaker",
                          severity="critical", limit=120.0)  # fmt: skip
    assert check.observe(now=T0 + 100, value=100.0, began=T0) is None
    alert = check.observe(now=T0 + 130, value=130.0, began=T0)
    assert isinstance(alert, AlertEvent) and alert.reading_ts == T0 and alert.severity == "critical"
    check.sent(alert)
    clear = check.observe(now=T0 + 200, value=0.0)
    assert isinstance(clear, Clear) and (clear.since, clear.cleared_at) == (T0, T0 + 200)


def test_a_pipeline_notification_says_what_is_wrong() -> None:
    check = lag_check(hold=0.0)
    alert = check.observe(now=T0, value=150_000.0)
    assert isinstance(alert, AlertEvent)
    (notification,) = IncidentTracker(POLICY).on_alert(alert, now=T0)
    assert headline(notification) == (
        "[WARNING] FIRING: pipeline consumer-lag/thermoflow-sink (consumer lag 150,000 records (limit 1,000))"
    )


# -- settings -----------------------------------------------------------------------------------


def alerts_settings(**overrides: Any) -> AlertsSettings:
    return AlertsSettings(**overrides)


def test_the_watched_groups_default_to_the_pipelines_own() -> None:
    defaults = alerts_settings()
    assert defaults.lag_groups == [
        ProcessorSettings.model_fields["processor_group"].default,
        IngestSettings.model_fields["sink_group"].default,
        defaults.store_group,
        defaults.notify_group,
    ]


def test_the_watched_groups_follow_the_names_the_components_are_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`thermoflow run` and the isolated test runs give every process the same THERMOFLOW_* names."""
    names = {"PROCESSOR_GROUP": "p-1", "SINK_GROUP": "s-1", "STORE_GROUP": "st-1", "NOTIFY_GROUP": "n-1"}
    for name, value in names.items():
        monkeypatch.setenv(f"THERMOFLOW_{name}", value)
    assert alerts_settings().lag_groups == ["p-1", "s-1", "st-1", "n-1"]
    assert ProcessorSettings().processor_group == "p-1" and IngestSettings().sink_group == "s-1"


@pytest.mark.parametrize(
    "overrides",
    [
        {"deadletter_rate_alert": -1},
        {"consumer_lag_alert": -5},
        {"breaker_open_alert": -0.5},
        {"pipeline_alert_window": 0},
        {"pipeline_check_interval": 0},
        {"pipeline_check_interval": 120, "pipeline_alert_window": 60},
        {"consumer_lag_groups": ""},
        {"consumer_lag_groups": ","},
        {"sink_group": ""},
        {"consumer_lag_groups": "a,,b"},
        {"consumer_lag_groups": "has space"},
    ],
)
def test_bad_pipeline_alert_settings_fail_at_start(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        alerts_settings(**overrides)


def test_zero_turns_a_pipeline_alert_off_and_groups_are_read_once_each() -> None:
    settings = alerts_settings(deadletter_rate_alert=0, consumer_lag_groups="a,b,a")
    assert settings.deadletter_rate_alert == 0
    assert settings.lag_groups == ["a", "b"]


# -- the notifier's watch, with a recording producer and no Kafka ---------------------------------


class RecordingProducer:
    """Records what is sent; ``fail`` makes the next send's ack fail (Kafka did not take it)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]] = []
        self.fail = False

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            self.fail = False
            ack.set_exception(KafkaTimeoutError())
        else:
            self.sent.append((topic, value, key, headers))
            ack.set_result(None)
        return ack


async def test_the_watch_raises_an_open_breaker_once_and_a_failed_send_again_with_the_same_id() -> None:
    settings = alerts_settings(breaker_open_alert=120.0, alerts_topic="alerts")
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after=30.0, clock=clock)
    producer = RecordingProducer()
    watch = PipelineWatch(
        settings, producer=cast(Any, producer), breakers=lambda: {"hook": breaker}, owner=lambda: False,
        clock=clock,
    )  # fmt: skip
    breaker.record_failure()
    tripped = clock()
    clock.advance(60)
    assert await watch.check() == []  # open for a minute: under the setting
    clock.advance(61)
    producer.fail = True
    with pytest.raises(KafkaTimeoutError):
        await watch.check()
    [alert] = await watch.check()  # not acked before: sent again, the same alert
    assert isinstance(alert, AlertEvent)
    assert (alert.rule_id, alert.condition, alert.severity, alert.reading_ts) == (
        "breaker-open/hook",
        "breaker_open",
        "critical",
        tripped,
    )
    clock.advance(10)
    assert await watch.check() == []
    breaker.record_success()
    [clear] = await watch.check()
    assert isinstance(clear, Clear) and clear.since == tripped
    [(topic, value, key, headers), (_, _, _, clear_headers)] = producer.sent
    assert (topic, key, headers) == ("alerts", b"pipeline", None)
    assert decode_alert(value).alert_id == alert.alert_id
    assert clear_headers == CLEAR_HEADERS


async def test_a_breaker_that_only_ever_worked_says_nothing_unless_an_incident_was_left_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after=30.0, clock=clock)
    breaker.record_success()
    producer = RecordingProducer()
    left: set[str] = set()
    watch = PipelineWatch(
        alerts_settings(), producer=cast(Any, producer), breakers=lambda: {"hook": breaker},
        owner=lambda: False, left_open=lambda rule_id, condition: rule_id in left, clock=clock,
    )  # fmt: skip
    assert await watch.check() == []
    left.add("breaker-open/hook")  # an earlier notifier raised it (the state topic says)
    [clear] = await watch.check()
    assert isinstance(clear, Clear) and clear.since == clear.cleared_at == clock()
