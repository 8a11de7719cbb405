from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoflow.events import AlertEvent, new_alert
from thermoflow.rules import DEFAULT_RULES_FILE, RuleSet, load_rules, parse_rules
from thermoflow.simulator.score import AlertScorer, KeyMode, delivery
from thermoflow.simulator.truth import GroundTruth, Thresholds, episodes_of

RULES = parse_rules(
    """
rules:
  - {id: freezer, devices: "freezer-*", above: {warning: -12.0, critical: -8.0}, below: {critical: -35.0}}
  - {id: only-critical, devices: "rack-*", above: {critical: 40.0}}
  - {id: humidity, devices: "greenhouse-*", metric: humidity, above: {warning: 90}}
default: {id: default, above: {warning: 35.0, critical: 45.0}, below: {warning: -5.0, critical: -20.0}}
"""
)
DEVICES = ("freezer-0001", "rack-0001", "greenhouse-0001", "outdoor-0001", "coldroom-0001")


@settings(max_examples=300)
@given(
    rules=st.sampled_from([RULES, load_rules(DEFAULT_RULES_FILE)]),
    readings=st.lists(
        st.tuples(
            st.integers(0, len(DEVICES) - 1),
            st.one_of(
                st.floats(-60, 60, allow_nan=False),
                st.sampled_from([-35.0, -20.0, -12.0, -8.0, -5.0, 35.0, 40.0, 45.0, 8.0, 10.0]),
            ),
        ),
        max_size=60,
    ),
)
def test_vectorized_classify_matches_the_scalar_rules(
    rules: RuleSet, readings: list[tuple[int, float]]
) -> None:
    thresholds = Thresholds.compile(rules, DEVICES)
    devices = np.array([d for d, _ in readings], dtype=np.int64)
    values = np.array([v for _, v in readings], dtype=np.float64)
    rank, condition, threshold = thresholds.classify(devices, values)
    for i, (device, value) in enumerate(readings):
        breach = rules.classify(DEVICES[device], "temperature", value)
        if breach is None:
            assert rank[i] == 0
            continue
        assert thresholds.rule_ids[thresholds.rule_index[device]] == breach.rule_id
        assert ("warning", "critical")[rank[i] - 1] == breach.severity
        assert ("above", "below")[condition[i]] == breach.condition
        assert threshold[i] == breach.threshold


def _scalar_episodes(
    events: list[tuple[int, float, int]], gap: float
) -> set[tuple[int, int, float, float, int]]:
    """Obviously right: per device and level, walk the breaches in time order."""
    found = set()
    for level in (1, 2):
        for device in {d for d, _, _ in events}:
            times = sorted(t for d, t, r in events if d == device and r >= level)
            start: float | None = None
            prev = 0.0
            count = 0
            for t in times:
                if start is not None and t - prev > gap:
                    found.add((device, level, start, prev, count))
                    start, count = None, 0
                start = t if start is None else start
                prev = t
                count += 1
            if start is not None:
                found.add((device, level, start, prev, count))
    return found


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 200).map(float), st.integers(1, 2)),
        unique_by=lambda e: (e[0], e[1]),
        max_size=80,
    ),
    st.sampled_from([0.5, 3.0, 10.0]),
)
def test_episodes_match_a_scalar_grouping(events: list[tuple[int, float, int]], gap: float) -> None:
    got = episodes_of(
        devices=np.array([d for d, _, _ in events], dtype=np.int64),
        ts=np.array([t for _, t, _ in events]),
        rank=np.array([r for _, _, r in events], dtype=np.int8),
        rule_index=np.zeros(4, dtype=np.int64),
        rule_ids=("r",),
        device_ids=("d0", "d1", "d2", "d3"),
        incident_gap=gap,
    )
    as_tuples = {
        (int(e.device_id[1]), 1 if e.level == "warning" else 2, e.first_ts, e.last_ts, e.readings)
        for e in got
    }
    assert as_tuples == _scalar_episodes(events, gap)
    assert len(got) == len(as_tuples)


def _alert(
    device: str, rule: str, severity: str, ts: float, value: float, condition: str = "above"
) -> AlertEvent:
    return new_alert(
        device_id=device,
        metric="temperature",
        rule_id=rule,
        severity=severity,  # type: ignore[arg-type]
        condition=condition,  # type: ignore[arg-type]
        threshold=0.0,
        value=value,
        reading_ts=ts,
        detected_at=ts + 0.1,
    )


def _truth() -> GroundTruth:
    truth = GroundTruth(Thresholds.compile(RULES, DEVICES), DEVICES)
    # freezer-0001: readings at t=100..104: warning, critical, warning, ok, then t=200 warning.
    ts = np.array([100.0, 101.0, 102.0, 103.0, 200.0])
    values = np.array([-10.0, -5.0, -11.0, -20.0, -11.5])
    truth.record(np.zeros(5, dtype=np.int64), np.arange(5, dtype=np.int64), ts, values)
    return truth


def test_alert_precision_and_recall_over_episodes() -> None:
    truth = _truth()
    episodes = truth.episodes(incident_gap=30.0)
    assert sorted((e.level, e.first_ts, e.last_ts, e.readings, e.peak) for e in episodes) == [
        ("critical", 101.0, 101.0, 1, "critical"),
        ("warning", 100.0, 102.0, 3, "critical"),
        ("warning", 200.0, 200.0, 1, "warning"),
    ]
    scorer = AlertScorer(breaches=truth.breaches(), episodes=episodes)
    # One batch held t=100..102: its worst reading (critical, t=101) covers the warning episode too.
    critical = _alert("freezer-0001", "freezer", "critical", 101.0, -5.0)
    wrong_severity = _alert("freezer-0001", "freezer", "critical", 102.0, -11.0)
    not_a_breach = _alert("freezer-0001", "freezer", "warning", 103.0, -20.0)
    score = scorer.score([critical, critical, wrong_severity, not_a_breach])
    assert score["received"] == 4 and score["unique"] == 3 and score["duplicates"] == 1
    assert score["correct"] == 1 and score["false_positives"] == 2
    assert score["precision"] == round(1 / 3, 6)
    assert score["recall_by_severity"]["critical"] == {"episodes": 1, "detected": 1, "recall": 1.0}
    assert score["recall_by_severity"]["warning"] == {"episodes": 2, "detected": 1, "recall": 0.5}
    assert score["missed"] == [
        {
            "device_id": "freezer-0001",
            "rule_id": "freezer",
            "level": "warning",
            "first_ts": 200.0,
            "last_ts": 200.0,
            "readings": 1,
        }
    ]
    late = _alert("freezer-0001", "freezer", "warning", 200.0, -11.5)
    full = scorer.score([critical, late])
    assert full["precision"] == 1.0 and full["recall"] == 1.0 and full["missed_episodes"] == 0


def test_alerts_without_device_timestamps_match_by_value() -> None:
    truth = _truth()
    scorer = AlertScorer(breaches=truth.breaches(), episodes=truth.episodes(incident_gap=30.0), by_value=True)
    # The bridge stamped the reading at receive time, a little after the publish.
    score = scorer.score([_alert("freezer-0001", "freezer", "critical", 101.02, -5.0)])
    assert score["precision"] == 1.0
    assert score["recall_by_severity"]["critical"]["recall"] == 1.0


def test_delivery_counts_loss_duplicates_and_strangers_by_seq_and_by_ts() -> None:
    pub_dev = np.array([0, 0, 0, 1, 1], dtype=np.int64)
    pub_seq = np.array([0, 1, 2, 0, 1], dtype=np.int64)
    pub_ts = np.array([10.000001, 11.000001, 12.0, 10.5, 11.5])
    got_dev = np.array([0, 0, 0, 1, 1, 1], dtype=np.int64)
    got_seq = np.array([0, 2, 2, 0, 1, 7], dtype=np.int64)
    got_ts = np.array([10.000001, 12.0, 12.0, 10.5, 11.5, 99.0])
    modes: tuple[KeyMode, ...] = ("seq", "ts")
    for mode in modes:
        result = delivery(
            mode=mode,
            published=(pub_dev, pub_seq, pub_ts),
            received=(got_dev, got_seq, got_ts),
            origin=9.0,
        )
        assert (result["expected"], result["received"], result["unique"]) == (5, 6, 4)
        assert (result["lost"], result["duplicates"], result["unexpected"]) == (1, 1, 1)
        assert result["lost_by_device"] == {0: 1}
    counted = delivery(
        mode="count",
        published=(pub_dev, pub_seq, pub_ts),
        received=(got_dev[:3], got_seq[:3], got_ts[:3]),
        origin=0,
    )
    assert counted["lost"] == 2 and counted["duplicates"] is None


@given(
    published=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30)), unique=True, max_size=60),
    picks=st.lists(st.integers(0, 200), max_size=120),
    strangers=st.lists(st.tuples(st.integers(0, 5), st.integers(31, 40)), max_size=5),
)
def test_delivery_matches_a_scalar_count(
    published: list[tuple[int, int]], picks: list[int], strangers: list[tuple[int, int]]
) -> None:
    received = [published[i % len(published)] for i in picks] if published else []
    received += strangers
    origin = 1_700_000_000.0

    def arrays(keys: list[tuple[int, int]]) -> tuple[Any, Any, Any]:
        dev = np.array([d for d, _ in keys], dtype=np.int64)
        seq = np.array([s for _, s in keys], dtype=np.int64)
        return dev, seq, origin + seq * 0.25 + dev * 1e-6  # a ts per key, as published

    want = set(published)
    got_known = [k for k in received if k in want]
    for mode in ("seq", "ts"):
        result = delivery(mode=mode, published=arrays(published), received=arrays(received), origin=origin)
        assert result["lost"] == len(want - set(received))
        assert result["duplicates"] == len(got_known) - len(set(got_known))
        assert result["unexpected"] == len(received) - len(got_known)
        assert result["unique"] == len(set(got_known))
