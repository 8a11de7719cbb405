"""The incident lifecycle: fire, escalate and resolve in event time (the pipeline watermark),
repeat on an injected clock, and replays."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from tests.support.fakes import FakeClock, make_alert
from thermoflow.alerts.lifecycle import (
    Policy,
    StoredIncident,
    apply_breach,
    decode_incident,
    fold_events,
    settle,
    tick,
)
from thermoflow.alerts.tracker import IncidentTracker
from thermoflow.events import Severity

POLICY = Policy(resolve_after=60.0, repeat_interval=120.0)


def test_ten_minutes_of_breaches_fire_once_repeat_on_schedule_and_resolve_once() -> None:
    clock = FakeClock()
    start = clock()
    tracker = IncidentTracker(POLICY)
    sent: list[tuple[str, float]] = []
    # A breach every 10 s for 10 minutes; the notifier ticks every second, and the pipeline's
    # watermark follows the readings (no lag).
    for second in range(0, 15 * 60):
        now = start + second
        clock.t = now
        if second < 600 and second % 10 == 0:
            for n in tracker.on_alert(make_alert("freezer-1", now, value=-3.0 + second / 1000), now=now):
                sent.append((n.transition, now - start))
        for n in tracker.on_watermark(partition=-1, watermark=now, now=now) + tracker.on_tick(now=now):
            sent.append((n.transition, now - start))

    assert sent == [
        ("fire", 0),
        ("repeat", 120),
        ("repeat", 240),
        ("repeat", 360),
        ("repeat", 480),
        ("repeat", 600),  # still open: the last breach (590 s) is not 60 s old yet
        ("resolve", 590 + 60),
    ]
    incident = tracker.incidents[("freezer-1", "freezer-too-warm", "threshold")]
    assert incident.breach_count == 60
    assert incident.resolved_at == start + 590 + 60
    assert incident.peak_value == -3.0 + 590 / 1000


def test_warning_to_critical_escalates_once_and_severity_never_goes_down() -> None:
    tracker = IncidentTracker(POLICY)
    t = 1000.0
    kinds = []
    severities: list[Severity] = ["warning", "warning", "critical", "warning", "critical", "warning"]
    for i, severity in enumerate(severities):
        alert = make_alert("f", t + i, severity=severity)
        kinds += [n.transition for n in tracker.on_alert(alert, now=t + i)]
    assert kinds == ["fire", "escalate"]
    assert tracker.incidents[("f", "freezer-too-warm", "threshold")].severity == "critical"


def test_a_repeat_is_due_again_interval_after_an_escalation() -> None:
    tracker = IncidentTracker(Policy(resolve_after=1000, repeat_interval=100))
    tracker.on_alert(make_alert("f", 0.0), now=0.0)
    tracker.on_alert(make_alert("f", 50.0, severity="critical"), now=50.0)
    assert tracker.on_tick(now=100.0) == []
    assert [n.transition for n in tracker.on_tick(now=150.0)] == ["repeat"]


def test_after_a_long_pause_one_repeat_goes_out_not_a_burst() -> None:
    tracker = IncidentTracker(Policy(resolve_after=10_000, repeat_interval=100))
    tracker.on_alert(make_alert("f", 0.0), now=0.0)
    tracker.on_alert(make_alert("f", 900.0), now=900.0)
    assert [n.transition for n in tracker.on_tick(now=950.0)] == ["repeat"]
    assert tracker.on_tick(now=999.0) == []
    assert [n.transition for n in tracker.on_tick(now=1000.0)] == ["repeat"]


def test_replayed_alerts_of_a_resolved_incident_do_not_fire_again() -> None:
    tracker = IncidentTracker(POLICY)
    alerts = [make_alert("f", 100.0 + i) for i in range(5)]
    for a in alerts:
        tracker.on_alert(a, now=a.reading_ts)
    assert [n.transition for n in tracker.on_watermark(partition=-1, watermark=200.0, now=200.0)] == [
        "resolve"
    ]
    replayed = [n for a in alerts for n in tracker.on_alert(a, now=300.0)]
    assert replayed == []
    # A new breach after the incident is a new incident.
    fired = tracker.on_alert(make_alert("f", 400.0), now=400.0)
    assert [n.transition for n in fired] == ["fire"]
    assert fired[0].seq == 1


def test_a_breach_after_a_gap_in_event_time_resolves_the_old_incident_and_fires_a_new_one() -> None:
    first, _ = apply_breach(None, make_alert("f", 0.0), policy=POLICY, now=0.0)
    second, transitions = apply_breach(first, make_alert("f", 61.0), policy=POLICY, now=61.0)
    assert [t.kind for t in transitions] == ["resolve", "fire"]
    assert transitions[0].incident.resolved_at == 60.0
    assert second.incident_id != first.incident_id


def test_idempotency_keys_are_stable_and_distinct_per_transition() -> None:
    def run() -> list[str]:
        tracker = IncidentTracker(Policy(resolve_after=30, repeat_interval=10))
        keys = [n.idempotency_key for n in tracker.on_alert(make_alert("f", 0.0), now=0.0)]
        keys += [n.idempotency_key for n in tracker.on_tick(now=10.0)]
        keys += [n.idempotency_key for n in tracker.on_tick(now=20.0)]
        keys += [n.idempotency_key for n in tracker.on_watermark(partition=-1, watermark=30.0, now=30.0)]
        return keys

    assert run() == run()
    assert len(set(run())) == 4


def test_tracker_restored_from_persisted_state_does_not_notify_again() -> None:
    tracker = IncidentTracker(POLICY)
    tracker.on_alert(make_alert("f", 0.0), now=0.0)
    restored = IncidentTracker(POLICY, tracker.take_changed())
    assert restored.on_alert(make_alert("f", 0.0), now=5.0) == []
    assert restored.on_watermark(partition=-1, watermark=59.0, now=30.0) == []
    assert [n.transition for n in restored.on_watermark(partition=-1, watermark=60.0, now=30.0)] == [
        "resolve"
    ]


# The store folds batches of new alerts; where batches split must not change the incidents.
alert_streams = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 400), st.sampled_from(["warning", "critical"])),
    max_size=40,
    unique_by=lambda x: (x[0], x[1], x[2]),
).map(lambda xs: sorted(xs, key=lambda x: x[1]))


@given(alert_streams, st.integers(0, 40))
def test_folding_in_two_batches_equals_folding_in_one(stream: list[tuple[str, int, str]], cut: int) -> None:
    alerts = [make_alert(device, float(ts), severity=sev) for device, ts, sev in stream]  # type: ignore[arg-type]
    whole = fold_events({}, alerts, policy=POLICY)
    first = fold_events({}, alerts[:cut], policy=POLICY)
    open_now = {s.incident.key: s for s in first.values() if s.status != "resolved"}
    second = fold_events(open_now, alerts[cut:], policy=POLICY)
    merged: dict[str, StoredIncident] = {**first, **second}
    assert merged == whole
    # Every alert is counted in exactly one incident.
    assert sum(s.incident.breach_count for s in whole.values()) == len(alerts)
    # At most one open incident per (device, rule).
    open_keys = [s.incident.key for s in whole.values() if s.status != "resolved"]
    assert len(open_keys) == len(set(open_keys))


def _scan_all(tracker: IncidentTracker, *, now: float, watermark: float | None) -> list[tuple[str, str, int]]:
    """The obviously-right reference for on_watermark and on_tick: look at every open incident."""
    out = []
    for key, incident in list(tracker.incidents.items()):
        if watermark is not None:
            updated, transitions = settle(incident, policy=tracker.policy, watermark=watermark)
        else:
            updated, transitions = tick(incident, policy=tracker.policy, now=now)
        tracker.incidents[key] = updated
        out += [(t.incident.device_id, t.kind, t.incident.seq) for t in transitions]
    return sorted(out)


events = st.lists(
    st.tuples(
        st.sampled_from(["alert", "tick", "watermark"]),
        st.sampled_from(["a", "b", "c"]),
        st.floats(0, 50),
        st.sampled_from(["warning", "critical"]),
    ),
    max_size=60,
)


@given(events)
def test_heap_driven_resolves_and_repeats_match_scanning_every_incident(
    steps: list[tuple[str, str, float, str]],
) -> None:
    policy = Policy(resolve_after=30.0, repeat_interval=20.0)
    fast, slow = IncidentTracker(policy), IncidentTracker(policy)
    now = 0.0
    for kind, device, advance, severity in steps:
        now += advance
        if kind == "alert":
            alert = make_alert(device, now, severity=severity)  # type: ignore[arg-type]
            a = [(n.device_id, n.transition, n.seq) for n in fast.on_alert(alert, now=now)]
            b = [(n.device_id, n.transition, n.seq) for n in slow.on_alert(alert, now=now)]
            assert a == b
        elif kind == "tick":
            got = sorted((n.device_id, n.transition, n.seq) for n in fast.on_tick(now=now))
            assert got == _scan_all(slow, now=now, watermark=None)
        else:
            watermark = now - advance / 2  # the pipeline lags the clock a little
            notified = fast.on_watermark(partition=-1, watermark=watermark, now=now)
            got = sorted((n.device_id, n.transition, n.seq) for n in notified)
            assert got == _scan_all(slow, now=now, watermark=watermark)
    assert fast.incidents == slow.incidents


def test_reloading_older_persisted_states_keeps_what_was_folded_since() -> None:
    # The persisted state: an incident that was resolved. Then, before the reload lands, a new
    # breach opens the next incident: the reload must not bring back the resolved one, or the
    # new incident never resolves.
    tracker = IncidentTracker(POLICY)
    tracker.on_alert(make_alert("f", 0.0), now=0.0)
    tracker.on_watermark(partition=-1, watermark=60.0, now=60.0)
    persisted = tracker.take_changed()
    restarted = IncidentTracker(POLICY, persisted)
    fired = restarted.on_alert(make_alert("f", 100.0), now=100.0)
    restarted.load(persisted)
    assert restarted.incidents[("f", "freezer-too-warm", "threshold")].incident_id == fired[0].incident_id
    resolved = restarted.on_watermark(partition=-1, watermark=160.0, now=160.0)
    assert [n.transition for n in resolved] == ["resolve"]


def test_reloading_keeps_breaches_folded_since_and_takes_newer_persisted_states() -> None:
    tracker = IncidentTracker(POLICY)
    tracker.on_alert(make_alert("f", 0.0), now=0.0)
    persisted = tracker.take_changed()
    tracker.on_alert(make_alert("f", 30.0), now=30.0)
    tracker.load(persisted)  # older: the breach at 30 s stays
    assert tracker.on_watermark(partition=-1, watermark=60.0, now=60.0) == []
    assert [n.transition for n in tracker.on_watermark(partition=-1, watermark=90.0, now=90.0)] == ["resolve"]

    # Another instance moved on (resolved it) while this one held an old state: take that one.
    stale = IncidentTracker(POLICY, persisted)
    stale.load(tracker.take_changed())
    assert not stale.incidents[("f", "freezer-too-warm", "threshold")].is_open
    assert stale.on_watermark(partition=-1, watermark=200.0, now=200.0) == []


def test_a_partition_resolves_only_on_its_own_watermark() -> None:
    tracker = IncidentTracker(POLICY)
    tracker.on_alert(make_alert("f", 0.0), now=0.0, partition=3)
    assert tracker.on_watermark(partition=1, watermark=1000.0, now=1.0) == []
    assert [n.transition for n in tracker.on_watermark(partition=3, watermark=60.0, now=1.0)] == ["resolve"]


def test_a_due_repeat_of_a_partition_held_elsewhere_goes_out_after_it_comes_back() -> None:
    tracker = IncidentTracker(Policy(resolve_after=1000.0, repeat_interval=60.0))
    tracker.on_alert(make_alert("f", 0.0), now=0.0, partition=3)
    persisted = tracker.take_changed()
    assert tracker.on_tick(now=60.0, partitions={1, 2}) == []
    tracker.load(persisted)  # partition 3 assigned again: the same state, due once more
    assert [n.transition for n in tracker.on_tick(now=61.0, partitions={3})] == ["repeat"]


def test_a_state_record_that_is_not_an_incident_reads_as_none_not_a_crash() -> None:
    tracker = IncidentTracker(POLICY)
    tracker.on_alert(make_alert("freezer-1", 100.0, value=-3.0), now=100.0)
    [incident] = tracker.take_changed()
    stored = msgspec.json.encode(incident)
    assert decode_incident(stored) == incident
    deep = b'{"incident_id": "x", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    hostile = (b"", b"\x00\xff", b"null", b"[]", b'{"incident_id": 1}', deep, b"[" * 100_000, stored[:-1])
    for value in hostile:
        assert decode_incident(value) is None
