"""The rules file: format, validation errors that name the rule and the field, and the scalar check."""

from __future__ import annotations

from pathlib import Path

import pytest

from thermoflow.rules import DEFAULT_RULES_FILE, Breach, RulesError, load_rules, parse_rules

RULES = """
version: 1
rules:
  - id: freezer
    devices: "freezer-*"
    above: {warning: -15.0, critical: -10.0}
    below: {critical: -35.0}
    hysteresis: 1.0
  - id: humidity-room
    devices: ["room-*", "hall-?"]
    metric: humidity
    above: {warning: 70}
  - id: room-temp
    devices: ["room-*"]
    below: {warning: 15}
default:
  id: fallback
  above: {warning: 35.0, critical: 45.0}
  below: {warning: -5.0, critical: -20.0}
"""


def test_rules_keep_file_order_with_the_default_last() -> None:
    rules = parse_rules(RULES)
    assert [rule.id for rule in rules.rules] == ["freezer", "humidity-room", "room-temp", "fallback"]
    assert rules.rules[-1].is_default
    freezer = rules.rules[0]
    assert freezer.metric == "temperature"
    assert dict(freezer.above) == {"warning": -15.0, "critical": -10.0}
    assert dict(freezer.below) == {"critical": -35.0}
    assert freezer.hysteresis == 1.0
    assert rules.rules[1].devices == ("room-*", "hall-?")


@pytest.mark.parametrize(
    ("device_id", "metric", "rule_id"),
    [
        ("freezer-0042", "temperature", "freezer"),
        ("room-1", "humidity", "humidity-room"),
        ("hall-7", "humidity", "humidity-room"),
        ("hall-77", "humidity", None),  # `?` is one character; default is for temperature
        ("room-1", "temperature", "room-temp"),  # the humidity rule does not apply: falls through
        ("rack-0001", "temperature", "fallback"),
        ("Freezer-0042", "temperature", "fallback"),  # globs are case-sensitive
        ("rack-0001", "pressure", None),
    ],
)
def test_first_matching_rule_for_the_metric_wins(device_id: str, metric: str, rule_id: str | None) -> None:
    rule = parse_rules(RULES).rule_for(device_id, metric)
    assert (rule.id if rule else None) == rule_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-16.0, None),
        (-15.0, None),  # exactly at the threshold does not breach
        (-14.9, Breach("freezer", "warning", "above", -15.0)),
        (-10.0, Breach("freezer", "warning", "above", -15.0)),
        (-9.5, Breach("freezer", "critical", "above", -10.0)),
        (-35.0, None),
        (-35.1, Breach("freezer", "critical", "below", -35.0)),
    ],
)
def test_classify_returns_the_highest_severity_crossed(value: float, expected: Breach | None) -> None:
    assert parse_rules(RULES).classify("freezer-1", "temperature", value) == expected


def test_classify_unmatched_metric_is_not_checked() -> None:
    assert parse_rules(RULES).classify("rack-1", "pressure", 1e9) is None


def test_overlapping_thresholds_prefer_severity_then_above() -> None:
    rules = parse_rules(
        "rules: [{id: odd, devices: '*', above: {warning: 0, critical: 10},"
        " below: {warning: 20, critical: 5}}]"
    )
    # 7 is above.warning (0) and below.warning (20): same severity, `above` wins.
    assert rules.classify("d", "temperature", 7.0) == Breach("odd", "warning", "above", 0.0)
    # 3 is above.warning and below.critical (5): critical wins.
    assert rules.classify("d", "temperature", 3.0) == Breach("odd", "critical", "below", 5.0)


def test_without_default_unmatched_devices_are_not_checked() -> None:
    rules = parse_rules("rules: [{id: a, devices: 'a-*', above: {critical: 1}}]")
    assert rules.classify("b-1", "temperature", 100.0) is None
    assert rules.classify("a-1", "temperature", 100.0) == Breach("a", "critical", "above", 1.0)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("rules: [{id: r1, devices: x, above: {warning: 5, critical: 1}}]", ["'r1'", "above.critical"]),
        ("rules: [{id: r1, devices: x, below: {warning: 1, critical: 5}}]", ["'r1'", "below.critical"]),
        ("rules: [{id: r1, devices: x, above: {warning: .inf}}]", ["'r1'", "above.warning", "finite"]),
        ("rules: [{id: r1, devices: x, below: {critical: .nan}}]", ["'r1'", "below.critical"]),
        ("rules: [{id: r1, devices: x, above: {warning: hot}}]", ["'r1'", "above.warning"]),
        ("rules: [{id: r1, devices: x, above: {warning: true}}]", ["'r1'", "above.warning"]),
        ("rules: [{id: r1, devices: x, above: {warn: 1}}]", ["'r1'", "warn"]),
        ("rules: [{id: r1, devices: x, abov: {warning: 1}}]", ["'r1'", "abov"]),
        ("rules: [{id: r1, devices: x, above: {}}]", ["'r1'", "above"]),
        ("rules: [{id: r1, devices: x}]", ["'r1'", "above", "below"]),
        ("rules: [{id: r1, devices: x, above: {warning: 1}, hysteresis: -1}]", ["'r1'", "hysteresis"]),
        ("rules: [{id: r1, devices: [], above: {warning: 1}}]", ["'r1'", "devices"]),
        ("rules: [{id: r1, above: {warning: 1}}]", ["'r1'", "devices"]),
        ("rules: [{devices: x, above: {warning: 1}}]", ["rules[0]", "id"]),
        ("rules: [{id: ok, devices: x, above: {warning: 1}}, 7]", ["rules[1]"]),
        (
            "rules: [{id: r1, devices: x, above: {warning: 1}}, {id: r1, devices: y, above: {warning: 1}}]",
            ["'r1'", "rules[1]", "id"],
        ),
        ("rules: [{id: default, devices: x, above: {warning: 1}}]\ndefault: {above: {warning: 1}}", ["id"]),
        ("default: {devices: x, above: {warning: 1}}", ["default", "devices"]),
        ("default: {above: {warning: 1, critical: 0}}", ["default", "above.critical"]),
        ("version: 2", ["version"]),
        ("rulez: []", ["rulez"]),
        ("rules: [oops", ["YAML"]),
    ],
)
def test_invalid_files_are_rejected_naming_the_rule_and_field(text: str, names: list[str]) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, source="my-rules.yaml")
    message = str(caught.value)
    assert message.startswith("my-rules.yaml: ")
    for name in names:
        assert name in message


def test_rules_error_is_a_value_error() -> None:
    assert issubclass(RulesError, ValueError)


def test_empty_file_has_no_rules() -> None:
    assert parse_rules("").rules == ()


def test_load_rules_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    assert load_rules(path).source == str(path)
    path.write_text("rules: [{id: r1, devices: x}]")
    with pytest.raises(RulesError, match=str(path)):
        load_rules(path)
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


# -- the shipped example covers the simulator's device profiles -------------------------------------

NORMAL_RANGES = {
    "freezer-0001": (-22.0, -16.0),
    "coldroom-0001": (2.0, 6.0),
    "rack-0001": (20.0, 30.0),
    "greenhouse-0001": (15.0, 32.0),
    "outdoor-0001": (-10.0, 35.0),
}


@pytest.mark.parametrize("device_id", sorted(NORMAL_RANGES))
def test_shipped_rules_cover_each_profile_and_stay_quiet_in_its_normal_range(device_id: str) -> None:
    rules = load_rules(DEFAULT_RULES_FILE)
    rule = rules.rule_for(device_id, "temperature")
    assert rule is not None and not rule.is_default
    low, high = NORMAL_RANGES[device_id]
    for step in range(101):
        value = low + (high - low) * step / 100
        assert rules.classify(device_id, "temperature", value) is None, value
    # An anomaly well outside the range crosses a critical threshold, both ways.
    assert rules.classify(device_id, "temperature", high + 30).severity == "critical"  # type: ignore[union-attr]
    assert rules.classify(device_id, "temperature", low - 30).severity == "critical"  # type: ignore[union-attr]


def test_shipped_rules_have_a_default() -> None:
    rules = load_rules(DEFAULT_RULES_FILE)
    assert rules.rules[-1].is_default
    assert rules.rule_for("unknown-device", "temperature") is rules.rules[-1]


def test_module_examples_hold() -> None:
    import doctest

    import thermoflow.rules

    assert doctest.testmod(thermoflow.rules).failed == 0
