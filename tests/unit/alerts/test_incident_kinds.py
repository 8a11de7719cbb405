"""Incidents per (device, rule, kind): the detectors' conditions beside the thresholds, offline
incidents that end on a clear and never by quiet time, and the store's fold agreeing with the
notifier's tracker on every incident."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.fakes import make_alert
from thermoflow.alerts.kafka_io import decode_event, state_key
from thermoflow.alerts.lifecycle import (
    Incident,
    IncidentKey,
    Policy,
    StoredIncident,
    apply_breach,
    apply_clear,
    fold_events,
    incident_id,
)
from thermoflow.alerts.notification import details, headline
from thermoflow.alerts.tracker import IncidentTracker
from thermoflow.events import (
    CLEAR_HEADERS,
    AlertEvent,
    Clear,
    Condition,
    EventDecodeError,
    Severity,
    encode,
    new_alert,
    stable_id,
)

POLICY = Policy(resolve_after=60.0, repeat_interval=10_000.0)
RULE = "freezer"


def detected(
    device_id: str,
    condition: Condition,
    reading_ts: float,
    *,
    value: float,
    threshold: float,
    severity: Severity = "warning",
) -> AlertEvent:
    """An alert of a detector's condition, as the processors emit it."""
    return new_alert(
        device_id=device_id,
        metric="temperature",
        rule_id=RULE,
        severity=severity,
        condition=condition,
        threshold=threshold,
        value=value,
        reading_ts=reading_ts,
        detected_at=reading_ts + value,
    )


def offline(
    device_id: str, last_reading: float, *, silent: float = 31.0, severity: Severity = "warning"
) -> AlertEvent:
    """The one offline alert of a silence: reading_ts is the last reading's received_at."""
    return detected(device_id, "offline", last_reading, value=silent, threshold=30.0, severity=severity)


def clear(device_id: str, *, since: float, cleared_at: float) -> Clear:
    return Clear(
        device_id=device_id,
        rule_id=RULE,
        condition="offline",
        since=since,
        cleared_at=cleared_at,
        detected_at=cleared_at + 0.1,
    )


def threshold_alert(device_id: str, ts: float) -> AlertEvent:
    return make_alert(device_id, ts, rule_id=RULE)


def test_a_threshold_and_a_stuck_incident_are_open_at_once_on_one_device() -> None:
    tracker = IncidentTracker(POLICY)
    fired = tracker.on_alert(threshold_alert("f", 100.0), now=100.0)
    fired += tracker.on_alert(detected("f", "stuck", 100.0, value=75.0, threshold=60.0), now=100.0)
    fired += tracker.on_alert(threshold_alert("f", 110.0), now=110.0)
    fired += tracker.on_alert(detected("f", "stuck", 110.0, value=85.0, threshold=60.0), now=110.0)

    assert [(n.transition, n.condition) for n in fired] == [("fire", "above"), ("fire", "stuck")]
    assert tracker.open_count == 2
    by_kind = {incident.kind: incident for incident in tracker.incidents.values()}
    assert by_kind["threshold"].breach_count == by_kind["stuck"].breach_count == 2
    assert by_kind["stuck"].peak_value == 85.0
    # Same device, rule and first reading, different kinds: different incidents. The threshold id is
    # the one incidents had before kinds existed, so stored and notified ids stay valid.
    assert by_kind["threshold"].incident_id == stable_id("f", RULE, repr(100.0), size=12)
    assert by_kind["stuck"].incident_id == incident_id(
        device_id="f", rule_id=RULE, opened_at=100.0, kind="stuck"
    )
    assert by_kind["stuck"].incident_id != by_kind["threshold"].incident_id


@pytest.mark.parametrize(
    ("condition", "values", "peak"),
    [
        ("above", [-5.0, -2.0, -4.0], -2.0),
        ("below", [-25.0, -31.0, -27.0], -31.0),
        ("rate", [3.2, -4.5, 4.0], -4.5),  # the steepest either way, its sign kept
        ("rate", [-3.2, 4.5, -4.0], 4.5),
        ("stuck", [61.0, 90.0, 75.0], 90.0),
        ("outlier", [11.0, 14.5, 12.0], 14.5),
    ],
)
def test_peak_value_is_the_worst_value_of_each_kind(
    condition: Condition, values: list[float], peak: float
) -> None:
    alerts = [detected("f", condition, 100.0 + i, value=v, threshold=3.0) for i, v in enumerate(values)]
    [stored] = fold_events({}, alerts, policy=POLICY).values()
    assert stored.incident.peak_value == peak
    tracker = IncidentTracker(POLICY)
    for alert in alerts:
        tracker.on_alert(alert, now=0.0)
    [incident] = tracker.incidents.values()
    assert incident.peak_value == peak


def test_an_offline_incident_stays_open_past_resolve_after_and_resolves_on_its_clear() -> None:
    tracker = IncidentTracker(POLICY)
    last_reading = 1_000.0
    fired = tracker.on_alert(offline("f", last_reading), now=1_031.0, partition=0)
    # The watermark goes far past resolve_after: a silent device stays offline.
    assert (
        tracker.on_watermark(partition=0, watermark=last_reading + 10 * POLICY.resolve_after, now=1_700.0)
        == []
    )
    # It gets worse (critical at a longer silence): the same silence, the same incident, escalated.
    escalated = tracker.on_alert(offline("f", last_reading, silent=400.0, severity="critical"), now=1_400.0)
    [incident] = tracker.incidents.values()
    assert incident.is_open and incident.peak_value == 400.0
    assert [n.transition for n in fired + escalated] == ["fire", "escalate"]

    resolved = tracker.on_clear(clear("f", since=last_reading, cleared_at=1_800.0), now=1_800.5)
    assert [(n.transition, n.resolved_at, n.incident_id) for n in resolved] == [
        ("resolve", 1_800.0, incident.incident_id)
    ]
    assert headline(resolved[0]) == (
        "[CRITICAL] RESOLVED: f freezer (offline: no reading for 400 s (limit 30 s))"
    )
    assert "readings back 1970-01-01 00:30:00 UTC, after 800 s without" in details(resolved[0])
    # Replayed: the clear, the alerts of the silence; nothing happens.
    assert tracker.on_clear(clear("f", since=last_reading, cleared_at=1_800.0), now=1_801.0) == []
    assert tracker.on_alert(offline("f", last_reading), now=1_802.0) == []
    # The next silence (after readings until 1 900 s) is a new incident.
    again = tracker.on_alert(offline("f", 1_900.0), now=1_931.0)
    assert [n.transition for n in again] == ["fire"] and again[0].incident_id != incident.incident_id


def test_a_clear_of_an_older_silence_does_not_end_a_newer_incident() -> None:
    tracker = IncidentTracker(POLICY)
    tracker.on_alert(offline("f", 2_000.0), now=2_031.0)
    assert tracker.on_clear(clear("f", since=1_000.0, cleared_at=1_500.0), now=2_040.0) == []
    # Nor does a clear of another rule, or of another kind's incident.
    assert tracker.on_clear(msgspec.structs.replace(clear("f", since=2_000.0, cleared_at=2_100.0),
                                                    rule_id="other"), now=2_100.0) == []  # fmt: skip
    [incident] = tracker.incidents.values()
    assert incident.is_open


def test_a_clear_ends_an_incident_read_back_from_the_store_at_microseconds() -> None:
    """PostgreSQL keeps microseconds: an incident reloaded from the store has ``opened_at``
    rounded, possibly up, past the clear's exact ``since``."""
    since = 1_796_004_243.2882779
    incident, _ = apply_breach(None, offline("f", since), policy=POLICY, now=since + 31)
    stored = msgspec.structs.replace(incident, opened_at=round(since, 6))
    assert stored.opened_at > since
    resolved, transitions = apply_clear(stored, clear("f", since=since, cleared_at=since + 60))
    assert [t.kind for t in transitions] == ["resolve"] and resolved is not None
    assert resolved.resolved_at == since + 60


def test_a_clear_ends_an_incident_postgresql_rounded_otherwise_than_python() -> None:
    """PostgreSQL rounds ``x`` seconds to microseconds as rint(x * 10^6): for this ``since`` that is
    one microsecond above Python's ``round(since, 6)`` (a CI run left such an offline incident open)."""
    since = 1_796_016_887.7887235
    stored_at = round(since * 1e6) / 1e6  # PostgreSQL's rounding
    assert round(stored_at, 6) > round(since, 6)
    incident, _ = apply_breach(None, offline("f", since), policy=POLICY, now=since + 31)
    stored = msgspec.structs.replace(incident, opened_at=stored_at)
    resolved, transitions = apply_clear(stored, clear("f", since=since, cleared_at=since + 60))
    assert [t.kind for t in transitions] == ["resolve"] and resolved is not None


def test_a_threshold_incident_still_resolves_by_quiet_time_beside_an_open_offline_one() -> None:
    tracker = IncidentTracker(POLICY)
    tracker.on_alert(threshold_alert("f", 1_000.0), now=1_000.0, partition=0)
    tracker.on_alert(offline("f", 1_005.0), now=1_036.0, partition=0)
    resolved = tracker.on_watermark(partition=0, watermark=1_060.0, now=1_060.0)
    assert [(n.transition, n.condition) for n in resolved] == [("resolve", "above")]
    assert tracker.open_count == 1


def test_the_store_fold_ignores_quiet_time_for_offline_and_a_replayed_clear_changes_nothing() -> None:
    first = fold_events(
        {},
        [offline("f", 1_000.0), offline("f", 1_000.0, silent=300.0, severity="critical")],
        policy=POLICY,
    )
    [opened] = first.values()
    assert opened.status == "firing"
    open_now = {opened.incident.key: opened}
    resolved = fold_events(open_now, [clear("f", since=1_000.0, cleared_at=1_400.0)], policy=POLICY)
    [(incident_id_, closed)] = resolved.items()
    assert incident_id_ == opened.incident.incident_id
    assert closed.status == "resolved" and closed.incident.resolved_at == 1_400.0
    # The store loads the latest resolved incident when none is open: a replayed clear changes nothing.
    assert fold_events({closed.incident.key: closed}, [clear("f", since=1_000.0, cleared_at=1_400.0)],
                       policy=POLICY) == {}  # fmt: skip


def test_a_persisted_state_from_before_kinds_reads_as_a_threshold_incident_under_its_old_key() -> None:
    old = (
        b'{"incident_id":"abc","device_id":"f","rule_id":"r","metric":"temperature","condition":"below",'
        b'"threshold":-30.0,"severity":"warning","opened_at":1.0,"last_breach_at":2.0,"peak_value":-31.0,'
        b'"breach_count":2,"resolved_at":null,"notified_at":1.0,"seq":1,"partition":3}'
    )
    incident = msgspec.json.decode(old, type=Incident)
    assert incident.kind == "threshold" and incident.key == ("f", "r", "threshold")
    assert state_key("f", "r", incident.kind) == b"f\x1fr"  # compacts onto the state written before
    assert state_key("f", "r", "offline") == b"f\x1fr\x1foffline"


def test_clear_records_decode_by_their_header_and_bad_ones_name_the_problem() -> None:
    good = clear("f", since=1.0, cleared_at=2.0)
    assert decode_event(encode(good), CLEAR_HEADERS) == good
    with pytest.raises(EventDecodeError, match=r"invalid clear: .*since"):
        decode_event(b'{"device_id": "f", "rule_id": "r", "condition": "offline", "cleared_at": 2.0,'
                     b' "detected_at": 2.0}', CLEAR_HEADERS)  # fmt: skip
    with pytest.raises(EventDecodeError, match="condition 'stuck' does not end on a clear"):
        decode_event(encode(msgspec.structs.replace(good, condition="stuck")), CLEAR_HEADERS)
    with pytest.raises(EventDecodeError, match=r"`cleared_at` 0\.5 is before `since` 1\.0"):
        decode_event(encode(msgspec.structs.replace(good, cleared_at=0.5)), CLEAR_HEADERS)
    with pytest.raises(EventDecodeError, match="invalid alert event"):
        decode_event(encode(good), None)  # without its header, a clear is a bad alert


# Random streams of one device's records as the processors send them: threshold breaches, and
# silences (an offline alert, perhaps escalated, then the clear once readings come back).
Record = AlertEvent | Clear
steps = st.lists(
    st.tuples(st.sampled_from(["breach", "silence", "escalate", "clear", "replay"]), st.floats(0.5, 90.0)),
    max_size=40,
)


def build(plan: list[tuple[str, float]]) -> list[Record]:
    stream: list[Record] = []
    t = 1_000.0
    silent_since: float | None = None
    ended: list[Record] = []
    for step, advance in plan:
        t += advance
        if step == "breach" and silent_since is None:
            stream.append(threshold_alert("f", t))
        elif step == "silence" and silent_since is None:
            silent_since = t
            stream.append(offline("f", t))
            stream.append(detected("f", "stuck", t, value=advance, threshold=60.0))
        elif step == "escalate" and silent_since is not None:
            stream.append(offline("f", silent_since, silent=t - silent_since, severity="critical"))
        elif step == "clear" and silent_since is not None:
            ended = [offline("f", silent_since), clear("f", since=silent_since, cleared_at=t)]
            stream.append(ended[-1])
            silent_since = None
        elif step == "replay":
            stream += ended  # a redelivered alert and clear of the silence before
    return stream


def notified(stream: list[Record]) -> dict[str, tuple[float, float | None]]:
    """Every incident the notifier told about: (opened_at, resolved_at) by id."""
    tracker = IncidentTracker(POLICY)
    incidents: dict[str, tuple[float, float | None]] = {}
    for record in stream:
        if isinstance(record, Clear):
            notifications = tracker.on_clear(record, now=0.0)
        else:
            notifications = tracker.on_alert(record, now=0.0)
        for n in notifications:
            incidents[n.incident_id] = (n.opened_at, n.resolved_at)
    return incidents


def stored(stream: list[Record], cuts: list[int]) -> dict[str, tuple[float, float | None]]:
    """The store's way: per batch, the alerts not stored before and every clear, folded in order
    into the open incidents (or, per key without one, the latest resolved)."""
    incidents: dict[str, StoredIncident] = {}
    seen: set[str] = set()
    bounds = sorted({0, len(stream), *(c for c in cuts if 0 < c < len(stream))})
    for start, end in itertools.pairwise(bounds):
        fresh: list[Record] = []
        for record in stream[start:end]:
            if isinstance(record, Clear) or record.alert_id not in seen:
                fresh.append(record)
                if isinstance(record, AlertEvent):
                    seen.add(record.alert_id)
        latest: dict[IncidentKey, StoredIncident] = {}
        for s in sorted(incidents.values(), key=lambda s: s.incident.opened_at):
            if s.incident.key not in latest or latest[s.incident.key].status == "resolved":
                latest[s.incident.key] = s
        incidents.update(fold_events(latest, fresh, policy=POLICY))
    return {i: (s.incident.opened_at, s.incident.resolved_at) for i, s in incidents.items()}


@given(steps, st.lists(st.integers(0, 60), max_size=8))
def test_store_and_notifier_agree_on_every_incident_with_clears_and_replays(
    plan: list[tuple[str, float]], cuts: list[int]
) -> None:
    stream = build(plan)
    expected = notified(stream)
    assert stored(stream, cuts) == expected
    # Every silence is one incident, resolved by its clear at the clear's time; none by quiet time.
    silences = {(r.since, r.cleared_at) for r in stream if isinstance(r, Clear)}
    offline_ids = {
        incident_id(device_id="f", rule_id=RULE, opened_at=r.reading_ts, kind="offline")
        for r in stream
        if isinstance(r, AlertEvent) and r.condition == "offline"
    }
    offline_incidents = {expected[i] for i in offline_ids}
    assert {(o, r) for o, r in offline_incidents if r is not None} == silences
    assert len([r for _, r in offline_incidents if r is None]) <= 1  # the current silence, if any
