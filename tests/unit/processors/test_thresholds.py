"""thresholds.evaluate (numpy) against the scalar reference, on random rules and random batches."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import thermoflow.processors.thresholds
from thermoflow.processors import reference
from thermoflow.processors.thresholds import ReadingColumns, compile_rules, evaluate
from thermoflow.rules import RuleSet, parse_rules

THRESHOLDS = [-20.0, -5.0, 0.0, 0.5, 5.0, 30.0]
DEVICES = ["a-1", "a-22", "b-1", "b-x", "c-1"]
GLOBS = ["a-*", "b-?", "*", "c-1", "a-2?"]
METRICS = ["temperature", "humidity"]


@st.composite
def threshold_pairs(draw: Any, *, condition: str) -> dict[str, float] | None:
    chosen = draw(st.lists(st.sampled_from(THRESHOLDS), min_size=0, max_size=2, unique=True))
    if not chosen:
        return None
    if len(chosen) == 1:
        return {draw(st.sampled_from(["warning", "critical"])): chosen[0]}
    low, high = sorted(chosen)
    return {"warning": low, "critical": high} if condition == "above" else {"warning": high, "critical": low}


@st.composite
def rule_specs(draw: Any, *, index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": f"r{index}"}
    above = draw(threshold_pairs(condition="above"))
    below = draw(threshold_pairs(condition="below"))
    if above is None and below is None:
        above = {"warning": draw(st.sampled_from(THRESHOLDS))}
    if above is not None:
        spec["above"] = above
    if below is not None:
        spec["below"] = below
    if draw(st.booleans()):
        spec["metric"] = draw(st.sampled_from(METRICS))
    return spec


@st.composite
def rulesets(draw: Any) -> RuleSet:
    count = draw(st.integers(0, 4))
    rules = []
    for index in range(count):
        spec = draw(rule_specs(index=index))
        spec["devices"] = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2))
        rules.append(spec)
    document: dict[str, Any] = {"version": 1, "rules": rules}
    if draw(st.booleans()):
        document["default"] = draw(rule_specs(index=99))
    return parse_rules(yaml.safe_dump(document))


values = st.one_of(
    st.sampled_from(THRESHOLDS),  # exactly at a threshold: no breach
    st.sampled_from(THRESHOLDS).map(lambda t: float(np.nextafter(t, np.inf))),
    st.sampled_from(THRESHOLDS).map(lambda t: float(np.nextafter(t, -np.inf))),
    st.floats(-50, 50, allow_nan=False),
)
readings = st.builds(
    reference.ScalarReading,
    device_id=st.sampled_from(DEVICES),
    metric=st.sampled_from(METRICS),
    value=values,
    ts=st.sampled_from([1.0, 2.0, 3.0]),  # few timestamps: ties on value and ts happen
)


def columns(batch: list[reference.ScalarReading]) -> ReadingColumns:
    pairs: dict[tuple[str, str], int] = {}
    index = [pairs.setdefault((r.device_id, r.metric), len(pairs)) for r in batch]
    return ReadingColumns(
        device_ids=[device for device, _ in pairs],
        metrics=[metric for _, metric in pairs],
        pair=np.array(index, dtype=np.int64),
        values=np.array([r.value for r in batch], dtype=np.float64),
        ts=np.array([r.ts for r in batch], dtype=np.float64),
    )


def vectorized(batch: list[reference.ScalarReading], rules: RuleSet) -> set[reference.ScalarBreach]:
    compiled = compile_rules(rules)
    found = evaluate(columns(batch), compiled)
    return {
        reference.ScalarBreach(
            device_id=batch[int(found.reading[row])].device_id,
            metric=batch[int(found.reading[row])].metric,
            rule_id=compiled.rule_ids[int(found.rule[row])],
            severity=found.severity_name(row),
            condition=found.condition_name(row),
            threshold=float(found.threshold[row]),
            value=batch[int(found.reading[row])].value,
            ts=batch[int(found.reading[row])].ts,
        )
        for row in range(len(found))
    }


@settings(max_examples=400, deadline=None)
@given(rules=rulesets(), batch=st.lists(readings, max_size=60))
def test_vectorized_check_equals_the_scalar_reference(
    rules: RuleSet, batch: list[reference.ScalarReading]
) -> None:
    expected = reference.evaluate(batch, rules)
    assert len(expected) == len(set(expected))
    assert vectorized(batch, rules) == set(expected)


@settings(max_examples=100, deadline=None)
@given(rules=rulesets(), batch=st.lists(readings, max_size=60))
def test_at_most_one_breach_per_device_and_rule(rules: RuleSet, batch: list[reference.ScalarReading]) -> None:
    found = vectorized(batch, rules)
    keys = [(breach.device_id, breach.rule_id) for breach in found]
    assert len(keys) == len(set(keys))


SIMPLE = parse_rules("""
rules:
  - {id: cold, devices: "freezer-*", above: {warning: -15, critical: -10}, below: {critical: -35}}
default: {id: default, above: {warning: 35, critical: 45}, below: {warning: -5, critical: -20}}
""")


def test_worst_reading_wins_at_its_severity() -> None:
    batch = [
        reference.ScalarReading("freezer-1", "temperature", -14.0, 1.0),  # warning
        reference.ScalarReading("freezer-1", "temperature", -9.0, 2.0),  # critical, the worst
        reference.ScalarReading("freezer-1", "temperature", -12.0, 3.0),
        reference.ScalarReading("rack-1", "temperature", 36.0, 1.0),
        reference.ScalarReading("rack-1", "temperature", 35.0, 2.0),  # at the threshold: no breach
    ]
    found = {(b.device_id, b.severity, b.value, b.ts) for b in vectorized(batch, SIMPLE)}
    assert found == {("freezer-1", "critical", -9.0, 2.0), ("rack-1", "warning", 36.0, 1.0)}


def test_both_ways_in_one_batch_reports_the_higher_severity_then_above() -> None:
    warm_warning_cold_critical = [
        reference.ScalarReading("rack-1", "temperature", 40.0, 1.0),  # above warning
        reference.ScalarReading("rack-1", "temperature", -25.0, 2.0),  # below critical
    ]
    (breach,) = vectorized(warm_warning_cold_critical, SIMPLE)
    assert (breach.condition, breach.severity, breach.value) == ("below", "critical", -25.0)
    both_warning = [
        reference.ScalarReading("rack-1", "temperature", -6.0, 1.0),
        reference.ScalarReading("rack-1", "temperature", 36.0, 2.0),
    ]
    (breach,) = vectorized(both_warning, SIMPLE)
    assert (breach.condition, breach.severity, breach.value) == ("above", "warning", 36.0)


def test_equal_values_pick_the_earliest_reading() -> None:
    batch = [
        reference.ScalarReading("rack-1", "temperature", 50.0, 3.0),
        reference.ScalarReading("rack-1", "temperature", 50.0, 1.0),
        reference.ScalarReading("rack-1", "temperature", 50.0, 2.0),
    ]
    (breach,) = vectorized(batch, SIMPLE)
    assert breach.ts == 1.0


def test_empty_batches_and_empty_rules() -> None:
    assert vectorized([], SIMPLE) == set()
    assert vectorized([reference.ScalarReading("rack-1", "temperature", 99.0, 1.0)], parse_rules("")) == set()


def test_module_examples_hold() -> None:
    assert doctest.testmod(thermoflow.processors.thresholds).failed == 0


def test_a_batch_spanning_a_long_time_keeps_one_alert_per_window_so_the_breach_stays_continuous() -> None:
    # A backlog: 30 s of one device breaching every 0.5 s, in one batch, plus a normal device.
    rules = compile_rules(parse_rules("default: {above: {warning: 30, critical: 40}}"))
    ts = np.concatenate([np.arange(0.0, 30.0, 0.5), np.arange(0.0, 30.0, 0.5)]) + 1_000.0
    batch = ReadingColumns(
        device_ids=["hot", "fine"],
        metrics=["temperature"] * 2,
        pair=np.repeat(np.array([0, 1]), 60),
        values=np.concatenate([np.full(60, 35.0), np.full(60, 20.0)]),
        ts=ts,
    )
    assert len(evaluate(batch, rules)) == 1  # without a window: one alert for the whole stretch
    found = evaluate(batch, rules, window=1.0)
    times = np.sort(batch.ts[found.reading])
    assert len(found) == 30 and set(batch.pair[found.reading].tolist()) == {0}
    assert times[0] == 1_000.0 and float(np.diff(times).max()) <= 1.0


@settings(max_examples=100, deadline=None)
@given(
    rules=rulesets(),
    batches=st.lists(
        st.lists(st.tuples(st.sampled_from(DEVICES), st.sampled_from(METRICS)), min_size=1, unique=True),
        max_size=5,
    ),
)
def test_rule_rows_of_later_batches_come_from_the_cache_and_agree(
    rules: RuleSet, batches: list[list[tuple[str, str]]]
) -> None:
    """One compiled rules object over batches of one metric and of both (the cache by metric)."""
    compiled = compile_rules(rules)
    for pairs in batches:
        for _ in range(2):  # the second asks the warm cache
            devices, metrics = [d for d, _ in pairs], [m for _, m in pairs]
            want = [
                -1 if rule is None else rules.rules.index(rule)
                for rule in (rules.rule_for(d, m) for d, m in pairs)
            ]
            assert compiled.rule_indices(devices, metrics).tolist() == want
            single = [d for d, m in pairs if m == metrics[0]]
            want_single = [w for (_, m), w in zip(pairs, want, strict=True) if m == metrics[0]]
            assert compiled.rule_indices(single, [metrics[0]] * len(single)).tolist() == want_single
