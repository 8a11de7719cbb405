"""The rules file: format, validation errors that name the rule and the field, and the scalar check."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from thermoflow.rules import (
    DEFAULT_RULES_FILE,
    NO_DETECTORS_CONFIG,
    WINDOW_BUCKETS,
    Breach,
    DetectorConfig,
    DetectorConfigError,
    OutlierConfig,
    RateConfig,
    RulesError,
    StuckConfig,
    load_rules,
    parse_rules,
)

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


# -- device detectors: the keys a rule may carry beside its thresholds ------------------------------

DETECTORS = """
rules:
  - id: freezer
    devices: "freezer-*"
    above: {warning: -12.0}
    offline_after: 30
    stuck: {tolerance: 0.05, for: 60, severity: warning}
    rate: {window: 60, warning: 1.5, critical: 3.0}
    outlier: {window: 300, warning: 6, critical: 10, min_abs_deviation: 3.0, min_samples: 4}
  - id: watched                # detectors only: no thresholds
    devices: "watched-*"
    offline_after: 120
    offline_severity: warning
default:
  above: {warning: 35}
  rate: {window: 120, critical: 2}
"""


def test_each_rule_parses_its_detectors_and_absent_ones_are_off() -> None:
    freezer, watched, default = parse_rules(DETECTORS).rules
    assert freezer.detectors == DetectorConfig(
        offline_after=30.0,
        offline_severity="critical",
        stuck=StuckConfig(tolerance=0.05, stuck_for=60.0, severity="warning"),
        rate=RateConfig(window=60.0, limits={"warning": 1.5, "critical": 3.0}),
        outlier=OutlierConfig(
            window=300.0, thresholds={"warning": 6.0, "critical": 10.0}, min_abs_deviation=3.0, min_samples=4
        ),
    )
    assert watched.detectors == DetectorConfig(offline_after=120.0, offline_severity="warning")
    assert (dict(watched.above), dict(watched.below)) == ({}, {})
    assert default.detectors == DetectorConfig(rate=RateConfig(window=120.0, limits={"critical": 2.0}))
    assert parse_rules(RULES).rules[0].detectors == NO_DETECTORS_CONFIG
    # The optional parts' defaults: severities critical, min_samples 8.
    plain = (
        parse_rules(
            "default: {offline_after: 5, stuck: {tolerance: 0, for: 1},"
            " outlier: {window: 60, warning: 4, min_abs_deviation: 1}}"
        )
        .rules[0]
        .detectors
    )
    assert plain.offline_severity == "critical" and plain.stuck is not None and plain.outlier is not None
    assert (plain.stuck.severity, plain.outlier.min_samples) == ("critical", 8)


def test_a_detector_config_written_back_as_yaml_parses_to_itself() -> None:
    for rule in (*parse_rules(DETECTORS).rules, *load_rules(DEFAULT_RULES_FILE).rules):
        text = yaml.safe_dump({"default": {"above": {"warning": 1.0}, **rule.detectors.to_yaml()}})
        assert parse_rules(text).rules[0].detectors == rule.detectors


HUGE = "1.0e+308"
WEEK_AND_A_SECOND = str(7 * 24 * 3600 + 1)
OUTLIER = "window: 300, warning: 6, min_abs_deviation: 1"


@pytest.mark.parametrize(
    ("keys", "names"),
    [
        # offline_after: a finite number of seconds in (0, 7 days]
        ("offline_after: .nan", ["`offline_after`", "finite", "nan"]),
        ("offline_after: .inf", ["`offline_after`", "finite", "inf"]),
        ("offline_after: -.inf", ["`offline_after`", "finite"]),
        (f"offline_after: {HUGE}", ["`offline_after`", "at most 604800"]),
        (f"offline_after: {WEEK_AND_A_SECOND}", ["`offline_after`", "at most 604800"]),
        ("offline_after: 0", ["`offline_after`", "> 0, got 0"]),
        ("offline_after: -30", ["`offline_after`", "> 0, got -30"]),
        ("offline_after: 30s", ["offline_after", "str"]),
        ("offline_after: yes", ["offline_after", "bool"]),
        ("offline_after: [30]", ["offline_after", "array"]),
        ("offline_after: {s: 30}", ["offline_after", "object"]),
        ("offline_severity: page\n    offline_after: 30", ["offline_severity", "page"]),
        # stuck
        ("stuck: {tolerance: 0.05, for: -1}", ["`stuck.for` must be a finite number > 0, got -1"]),
        ("stuck: {tolerance: 0.05, for: 0}", ["`stuck.for`", "> 0"]),
        ("stuck: {tolerance: 0.05, for: .nan}", ["`stuck.for`", "finite"]),
        (f"stuck: {{tolerance: 0.05, for: {HUGE}}}", ["`stuck.for`", "at most"]),
        ("stuck: {tolerance: -0.1, for: 60}", ["`stuck.tolerance`", ">= 0"]),
        ("stuck: {tolerance: .inf, for: 60}", ["`stuck.tolerance`", "finite"]),
        ("stuck: {tolerance: no, for: 60}", ["stuck.tolerance", "bool"]),
        ("stuck: {tolerance: 0.1}", ["stuck", "`for`"]),
        ("stuck: {tolerance: 0.1, stuck_for: 60}", ["stuck", "stuck_for"]),  # the file says `for`
        ("stuck: {tolerance: 0.1, for: 60, severity: page}", ["stuck.severity", "page"]),
        ("stuck: {tolerance: 0.1, for: 60, severity: {level: 1}}", ["stuck.severity"]),
        ("stuck: 60", ["stuck", "int"]),
        ("stuck: [0.1, 60]", ["stuck", "array"]),
        ("stuck: {tolerance: 0.1, for: {seconds: 60}}", ["stuck.for", "object"]),
        # rate
        ("rate: {window: 60}", ["`rate` must set `warning` and/or `critical`"]),
        ("rate: {warning: 1}", ["rate", "`window`"]),
        ("rate: {window: 60, warning: 3, critical: 1}", ["`rate.critical` (1.0) must be >= `rate.warning`"]),
        ("rate: {window: 60, warning: 0}", ["`rate.warning`", "> 0"]),
        ("rate: {window: 60, critical: -3}", ["`rate.critical`", "> 0"]),
        ("rate: {window: 60, critical: .nan}", ["`rate.critical`", "finite"]),
        ("rate: {window: 60, critical: .inf}", ["`rate.critical`", "finite"]),
        ("rate: {window: 60, critical: yes}", ["rate.critical", "bool"]),
        ("rate: {window: 60, critical: '3'}", ["rate.critical", "str"]),
        ("rate: {window: 60, critical: [3]}", ["rate.critical", "array"]),
        ("rate: {window: 0, critical: 3}", ["`rate.window`", "> 0"]),
        (f"rate: {{window: {HUGE}, critical: 3}}", ["`rate.window`", "at most"]),
        ("rate: {window: 60, critical: 3, page: 9}", ["rate", "page"]),
        ("rate: {window: 60, limits: {critical: 3}}", ["rate", "limits"]),
        # outlier
        ("outlier: {window: 300, min_abs_deviation: 3}", ["`outlier` must set `warning` and/or `critical`"]),
        ("outlier: {window: 300, warning: 6}", ["outlier", "`min_abs_deviation`"]),
        ("outlier: {window: 300, warning: 6, min_abs_deviation: 0}", ["`outlier.min_abs_deviation`", "> 0"]),
        ("outlier: {window: 300, warning: 6, min_abs_deviation: .nan}", ["`outlier.min_abs_deviation`"]),
        ("outlier: {window: 300, warning: 10, critical: 6, min_abs_deviation: 1}", ["`outlier.critical`"]),
        ("outlier: {window: 300, warning: -1, min_abs_deviation: 1}", ["`outlier.warning`", "> 0"]),
        (f"outlier: {{{OUTLIER}, min_samples: 0}}", ["`outlier.min_samples`"]),
        (f"outlier: {{{OUTLIER}, min_samples: 33}}", ["within 1..32"]),
        (f"outlier: {{{OUTLIER}, min_samples: 8.5}}", ["min_samples", "int"]),
        (f"outlier: {{{OUTLIER}, min_samples: yes}}", ["min_samples", "bool"]),
        (f"outlier: {{window: {WEEK_AND_A_SECOND}, warning: 6, min_abs_deviation: 1}}", ["`outlier.window`"]),
        ("outlier: {window: 300, warning: 6, min_abs_deviation: 1, threshold: 3}", ["outlier", "threshold"]),
        # both windows share the history's buckets: one at most 32 times the other
        (
            "rate: {window: 10, critical: 3}\n    outlier: {window: 321, warning: 6, min_abs_deviation: 1}",
            ["`rate.window` (10)", "`outlier.window` (321)", "factor of 32"],
        ),
        # unknown detector keys stay forbidden
        ("offline: 30", ["offline"]),
        ("stuck_for: 60", ["stuck_for"]),
    ],
)
def test_a_bad_detector_setting_names_the_rule_and_the_field(keys: str, names: list[str]) -> None:
    text = f"rules:\n  - id: freezer\n    devices: freezer-*\n    above: {{warning: 1}}\n    {keys}\n"
    with pytest.raises(RulesError) as caught:
        parse_rules(text, source="rules.yaml")
    message = str(caught.value)
    assert message.startswith("rules.yaml: rule 'freezer' (rules[0]): "), message
    for name in names:
        assert name in message, message


def test_a_bad_detector_setting_of_the_default_names_the_default() -> None:
    with pytest.raises(DetectorConfigError, match=r"^r.yaml: default rule: `offline_after` must be a finite"):
        parse_rules("default: {offline_after: -1}", source="r.yaml")


def test_a_rule_with_neither_thresholds_nor_detectors_is_refused() -> None:
    with pytest.raises(RulesError, match="set `above` and/or `below` \\(or a detector\\)"):
        parse_rules("rules: [{id: r1, devices: x, hysteresis: 1}]")


def test_detector_settings_built_in_code_are_checked_like_the_files() -> None:
    for bad in (True, float("nan"), float("inf"), -1.0, 0.0, 1e308, "30"):
        with pytest.raises(DetectorConfigError, match="`offline_after`"):
            DetectorConfig(offline_after=bad)  # type: ignore[arg-type]
    with pytest.raises(DetectorConfigError, match=r"`outlier\.min_samples` must be an integer"):
        OutlierConfig(window=60.0, thresholds={"warning": 6.0}, min_abs_deviation=1.0, min_samples=True)
    with pytest.raises(DetectorConfigError, match=r"`stuck\.severity`"):
        StuckConfig(tolerance=0.1, stuck_for=60.0, severity="page")  # type: ignore[arg-type]
    with pytest.raises(DetectorConfigError, match=r"`rate\.limits` must set"):
        RateConfig(window=60.0, limits={"page": 3.0})  # type: ignore[dict-item]
    assert issubclass(DetectorConfigError, RulesError)
    # The limit the history's size sets on min_samples is visible here, in the core.
    assert OutlierConfig(60.0, {"warning": 6.0}, 1.0, min_samples=WINDOW_BUCKETS).min_samples == 32


@pytest.mark.parametrize("rule_id", ["freezer", "coldroom", "rack", "greenhouse", "outdoor"])
def test_shipped_rules_page_in_time_for_devices_publishing_every_second(rule_id: str) -> None:
    rule = next(r for r in load_rules(DEFAULT_RULES_FILE).rules if r.id == rule_id)
    detectors = rule.detectors
    assert detectors.offline_after is not None and detectors.offline_after <= 30
    assert detectors.stuck is not None and detectors.stuck.stuck_for <= 60
    assert detectors.rate is not None and detectors.outlier is not None
    if rule_id == "freezer":  # a freezer warming at 3 °C/min pages
        assert detectors.rate.limits["critical"] <= 3.0
