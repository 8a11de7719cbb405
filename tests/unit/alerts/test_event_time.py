"""Incidents by event time: the store and the notifier read the same alerts partition (alerts
and the processors' watermark records) and must open and resolve the same incidents, however
the records are cut into batches, and never resolve an incident that a late backlog re-fires.

The store is modelled as it works: per batch, fold the new alerts (:func:`fold_events`), take
the batch's watermarks, then sweep the open incidents the watermark has passed (the SQL sweep
does exactly that, tested against PostgreSQL in tests/integration/alerts). The notifier is the
real :class:`IncidentTracker`, fed record by record.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from tests.support.fakes import make_alert
from thermoflow.alerts.lifecycle import Policy, StoredIncident, fold_events, resolve, resolve_cutoff
from thermoflow.alerts.tracker import IncidentTracker
from thermoflow.alerts.watermarks import PipelineWatermarks
from thermoflow.events import AlertEvent, Watermark
from thermoflow.processors.watermarks import PartitionProgress

POLICY = Policy(resolve_after=10.0, repeat_interval=10_000.0)
READINGS_PARTITIONS = 2

Record = AlertEvent | Watermark


def mark(partition: int, event_time: float, *, idle: bool = False) -> Watermark:
    return Watermark(
        source="thresholds",
        topic="readings",
        partition=partition,
        partitions=READINGS_PARTITIONS,
        event_time=event_time,
        idle=idle,
        emitted_at=event_time,
    )


@dataclass(frozen=True)
class Outcome:
    """What one side made of a stream: every incident by id, with its first breach and resolution."""

    opened: dict[str, tuple[str, float]]  # incident id: (device, opened_at)
    resolved: dict[str, float]


def notifier(stream: list[Record]) -> Outcome:
    tracker, marks = IncidentTracker(POLICY), PipelineWatermarks()
    opened: dict[str, tuple[str, float]] = {}
    resolved: dict[str, float] = {}
    for record in stream:
        if isinstance(record, AlertEvent):
            notifications = tracker.on_alert(record, now=0.0, partition=0)
        else:
            marks.observe(0, record)
            watermark = marks.watermark(0)
            notifications = (
                [] if watermark is None else tracker.on_watermark(partition=0, watermark=watermark, now=0.0)
            )
        for n in notifications:
            if n.transition == "fire":
                opened[n.incident_id] = (n.device_id, n.opened_at)
            elif n.transition == "resolve":
                assert n.resolved_at is not None
                resolved[n.incident_id] = n.resolved_at
    return Outcome(opened, resolved)


def store(stream: list[Record], cuts: list[int], *, sweep_every: int = 1) -> Outcome:
    marks = PipelineWatermarks()
    incidents: dict[str, StoredIncident] = {}
    stored: set[str] = set()
    reached: float | None = None  # the highest pipeline watermark since the last sweep
    bounds = sorted({0, len(stream), *(c for c in cuts if 0 < c < len(stream))})
    for batch_number, (start, end) in enumerate(itertools.pairwise(bounds)):
        batch = stream[start:end]
        fresh = [a for a in batch if isinstance(a, AlertEvent) and a.alert_id not in stored]
        stored.update(a.alert_id for a in fresh)
        open_now = {s.incident.key: s for s in incidents.values() if s.status != "resolved"}
        incidents.update(fold_events(open_now, fresh, policy=POLICY))
        for record in batch:
            if isinstance(record, Watermark):
                marks.observe(0, record)
                watermark = marks.watermark(0)
                if watermark is not None:
                    reached = watermark if reached is None else max(reached, watermark)
        if reached is None or (batch_number % sweep_every and end < len(stream)):
            continue
        cutoff = resolve_cutoff(watermark=reached, policy=POLICY)
        reached = None
        for incident_id, s in list(incidents.items()):  # the SQL sweep
            if s.status != "resolved" and s.incident.last_breach_at <= cutoff:
                incidents[incident_id] = StoredIncident(resolve(s.incident, policy=POLICY), "resolved")
    return Outcome(
        opened={i: (s.incident.device_id, s.incident.opened_at) for i, s in incidents.items()},
        resolved={
            i: s.incident.resolved_at
            for i, s in incidents.items()
            if s.status == "resolved" and s.incident.resolved_at is not None
        },
    )


def assert_no_resolve_then_refire(stream: list[Record], outcome: Outcome) -> None:
    """A device's next incident opens only after a real gap of ``resolve_after`` in its breaches
    (after the latest breach before it, in the order they arrive), never because it was resolved
    while a breach that continues it was still on its way."""
    latest: dict[str, float] = {}
    expected: dict[str, int] = {}
    for record in stream:
        if isinstance(record, AlertEvent):
            device, ts = record.device_id, record.reading_ts
            if device not in latest or ts - latest[device] >= POLICY.resolve_after:
                expected[device] = expected.get(device, 0) + 1
            latest[device] = max(latest.get(device, ts), ts)
    opened: dict[str, int] = {}
    for device, _ in outcome.opened.values():
        opened[device] = opened.get(device, 0) + 1
    assert opened == expected


# A truthful stream: every alert comes after the watermarks that cover it (its reading_ts is
# later than every watermark before it). Alerts may arrive out of time order, devices mixed,
# watermarks may stall for long stretches (a stopped processor, an outage) and lag behind.
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("alert"),
            st.sampled_from(["a", "b", "c"]),
            st.floats(0.1, 8.0),  # how far event time moves on
            st.floats(0.0, 1.0),  # how far back from the newest time this alert is (out of order)
            st.sampled_from(["warning", "critical"]),
        ),
        st.tuples(
            st.just("mark"),
            st.integers(0, READINGS_PARTITIONS - 1),
            st.floats(0.0, 5.0),  # lag behind the newest event time
            st.floats(0.0, 1.0),
            st.booleans(),  # idle
        ),
    ),
    max_size=80,
)


def build(plan: list[tuple[object, ...]]) -> list[Record]:
    stream: list[Record] = []
    newest = covered = 1_000.0
    for step in plan:
        if step[0] == "alert":
            _, device, advance, back, severity = step
            newest += float(advance)  # type: ignore[arg-type]
            ts = max(covered + 0.01, newest - float(back))  # type: ignore[arg-type]
            stream.append(make_alert(str(device), ts, severity=severity))  # type: ignore[arg-type]
        else:
            _, partition, lag, _, idle = step
            event_time = newest - float(lag)  # type: ignore[arg-type]
            covered = max(covered, event_time)
            stream.append(mark(int(partition), event_time, idle=bool(idle)))  # type: ignore[call-overload]
    return stream


@given(
    steps,
    st.lists(st.integers(0, 80), max_size=10),
    st.lists(st.integers(0, 80), max_size=10),
    st.integers(1, 4),
)
def test_any_cut_into_batches_gives_the_store_the_notifiers_incidents(
    plan: list[tuple[object, ...]], cuts: list[int], other_cuts: list[int], sweep_every: int
) -> None:
    stream = build(plan)
    expected = notifier(stream)
    assert store(stream, cuts) == expected
    assert store(stream, other_cuts, sweep_every=sweep_every) == expected
    assert_no_resolve_then_refire(stream, expected)


def test_a_backlog_after_a_stalled_watermark_extends_the_incident_instead_of_refiring() -> None:
    # A device breaches every second. The processor stops at 20 s (its watermark stalls there
    # while readings pile up in Kafka); a minute later it comes back and works off the backlog.
    stream: list[Record] = []
    for t in range(0, 21):
        stream += [
            make_alert("freezer-35", 1_000.0 + t),
            mark(0, 1_000.0 + t),
            mark(1, 1_000.0 + t, idle=True),
        ]
    # ... a minute passes: no record at all. The old rule (wall clock, alerts topic caught up)
    # resolved here and re-fired on the backlog.
    for t in range(21, 60):
        stream += [make_alert("freezer-35", 1_000.0 + t)]
    for t in range(21, 80):
        stream += [mark(0, 1_000.0 + t), mark(1, 1_000.0 + t, idle=True)]
    expected = notifier(stream)
    assert list(expected.opened.values()) == [("freezer-35", 1_000.0)]
    assert list(expected.resolved.values()) == [1_059.0 + POLICY.resolve_after]
    for cuts in ([], [21 * 3], [5, 63, 64, 100], list(range(0, len(stream), 7))):
        assert store(stream, cuts) == expected


def test_after_a_kafka_outage_partitions_do_not_turn_idle_before_the_backlog_arrives() -> None:
    # The processor's side of an outage: partition 0 carries a breaching device, partition 1
    # nothing. Kafka is down from 30 s to 90 s: the watermarks of those seconds are not acked
    # (disturbed). At 90 s Kafka is back but the bridge's backlog lands only at 95 s.
    progress = PartitionProgress(source="thresholds", topic="readings", idle_after=5.0)
    progress.assign({0, 1}, now=0.0)
    caught_up = lambda partition, next_offset: True  # noqa: E731  (nothing left in Kafka meanwhile)
    for second in range(0, 30):
        progress.processed(0, event_time=float(second), next_offset=second + 1, now=float(second))
    before = {m.partition: m for m in progress.marks(partitions=2, caught_up=caught_up, now=29.0)}
    assert (before[0].event_time, before[0].idle) == (29.0, False)
    assert (before[1].event_time, before[1].idle) == (24.0, True)  # quiet: follows the clock
    for second in range(30, 91):
        progress.disturbed(now=float(second))
    for second in range(90, 95):
        marks = {m.partition: m for m in progress.marks(partitions=2, caught_up=caught_up, now=float(second))}
        assert not marks[0].idle and marks[0].event_time == 29.0  # still waiting for the backlog
        assert 1 not in marks or not marks[1].idle

    consumer = PipelineWatermarks()
    consumer.observe(0, before[0])
    consumer.observe(0, before[1])
    consumer.observe(0, marks[0])
    if 1 in marks:
        consumer.observe(0, marks[1])
    assert consumer.watermark(0) == 29.0  # no incident of the outage's breaches resolves yet
