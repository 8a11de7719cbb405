"""Threshold rules: the ``rules.yaml`` format, its validation, and the scalar check of one reading.

Pure: no faust, no Kafka, no clock. The file looks like::

    version: 1
    rules:                       # first match wins, then `default`
      - id: freezer
        devices: "freezer-*"     # fnmatch glob on device_id, or a list of globs
        metric: temperature      # optional, default "temperature"
        above: {warning: -15.0, critical: -10.0}
        below: {critical: -35.0}
        hysteresis: 1.0          # optional, default 0
        offline_after: 30        # optional device detectors, see DetectorConfig
        stuck: {tolerance: 0.05, for: 60}
        rate: {window: 60, warning: 1.5, critical: 3.0}
        outlier: {window: 120, warning: 6, critical: 10, min_abs_deviation: 3.0}
    default:
      id: default
      above: {warning: 35.0, critical: 45.0}

A reading breaches ``above`` at severity S when ``value > threshold_S`` and ``below`` when
``value < threshold_S`` (strictly); its severity is the highest one crossed. The device
detectors' settings (:class:`DetectorConfig`) live here too, so the processors and the
simulator read them from one parser; their math is in ``thermoflow.processors.detectors``.

>>> rules = parse_rules('''
... rules:
...   - {id: freezer, devices: "freezer-*", above: {warning: -15, critical: -10}}
... default: {above: {critical: 45}}
... ''')
>>> rules.classify("freezer-0001", "temperature", -12.0)
Breach(rule_id='freezer', severity='warning', condition='above', threshold=-15.0)
>>> rules.classify("rack-0001", "temperature", 45.0) is None
True
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
import yaml

from thermoflow.events import SEVERITIES, Condition, Severity

DEFAULT_METRIC: Final = "temperature"
#: The shipped example, beside the processors that use it.
DEFAULT_RULES_FILE: Final = Path(__file__).parent / "processors" / "rules.yaml"

#: Conditions in tie-break order: when one reading breaches both at the same severity, ``above`` wins.
CONDITIONS: Final[tuple[Condition, ...]] = ("above", "below")


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the rule and the field."""


# -- device detector settings (the math: thermoflow.processors.detectors) -------------------------

#: Rate and outlier keep one reading per time bucket, WINDOW_BUCKETS buckets over the longer
#: window (processors.detectors.history): a baseline never holds more entries than that, so
#: ``outlier.min_samples`` is at most WINDOW_BUCKETS.
WINDOW_BUCKETS: Final = 32
#: The longest window, ``stuck.for`` and ``offline_after`` accepted (s): 7 days. Longer is
#: surely a typo (minutes or ms for seconds), and a bucket of window/32 stays below 6 hours.
MAX_WINDOW_S: Final = 7 * 24 * 3600.0


class DetectorConfigError(RulesError):
    """A detector setting that cannot be used; the message names the field."""


def _check(name: str, value: object, *, zero: bool = False, high: float = math.inf) -> None:
    """Raise unless ``value`` is a finite number (not a bool), > 0 (>= 0 with ``zero``) and <= ``high``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        raise DetectorConfigError(
            f"`{name}` must be a finite number {'>=' if zero else '>'} 0, got {value!r}"
        )
    if value > high:
        raise DetectorConfigError(f"`{name}` must be at most {high:g}, got {value!r}")


def _check_limits(name: str, limits: Mapping[Severity, float]) -> None:
    """A limit per severity: at least one, each a finite number > 0, critical >= warning."""
    if not limits or set(limits) - set(SEVERITIES):
        raise DetectorConfigError(f"`{name}` must set `warning` and/or `critical`, got {dict(limits)!r}")
    for severity, limit in limits.items():
        _check(f"{name}.{severity}", limit)
    warning, critical = limits.get("warning"), limits.get("critical")
    if warning is not None and critical is not None and critical < warning:
        raise DetectorConfigError(f"`{name}.critical` ({critical}) must be >= `{name}.warning` ({warning})")


@dataclass(frozen=True, slots=True)
class StuckConfig:
    """Stuck: the readings of one run stay within ``tolerance`` (°C, max - min) for ``stuck_for`` seconds."""

    tolerance: float
    stuck_for: float
    severity: Severity = "critical"

    def __post_init__(self) -> None:
        _check("stuck.tolerance", self.tolerance, zero=True)
        _check("stuck.for", self.stuck_for, high=MAX_WINDOW_S)
        if self.severity not in SEVERITIES:
            raise DetectorConfigError(f"`stuck.severity` must be one of {SEVERITIES}, got {self.severity!r}")


@dataclass(frozen=True, slots=True)
class RateConfig:
    """Rate: ``|°C/min|`` over ``window`` seconds beyond a limit per severity."""

    window: float
    limits: Mapping[Severity, float]

    def __post_init__(self) -> None:
        _check("rate.window", self.window, high=MAX_WINDOW_S)
        _check_limits("rate.limits", self.limits)

    @property
    def lowest(self) -> float:
        """The smallest limit that raises an incident (°C/min)."""
        return min(self.limits.values())


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Outlier: robust score over the device's last ``window`` seconds beyond a threshold per severity.

    ``min_abs_deviation`` (°C) keeps a quiet sensor, whose MAD is near zero, from scoring a
    page out of a 0.1 °C wobble; ``min_samples`` is the smallest baseline worth scoring against.
    """

    window: float
    thresholds: Mapping[Severity, float]
    min_abs_deviation: float
    min_samples: int = 8

    def __post_init__(self) -> None:
        _check("outlier.window", self.window, high=MAX_WINDOW_S)
        _check_limits("outlier.thresholds", self.thresholds)
        _check("outlier.min_abs_deviation", self.min_abs_deviation)
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int):
            raise DetectorConfigError(f"`outlier.min_samples` must be an integer, got {self.min_samples!r}")
        if not 1 <= self.min_samples <= WINDOW_BUCKETS:
            raise DetectorConfigError(
                f"`outlier.min_samples` must be within 1..{WINDOW_BUCKETS}, got {self.min_samples!r}"
            )

    @property
    def lowest(self) -> float:
        """The smallest score that raises an incident."""
        return min(self.thresholds.values())


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """The detectors of one rule; each is optional (None: off)."""

    offline_after: float | None = None
    offline_severity: Severity = "critical"
    stuck: StuckConfig | None = None
    rate: RateConfig | None = None
    outlier: OutlierConfig | None = None

    def __post_init__(self) -> None:
        if self.offline_after is not None:
            _check("offline_after", self.offline_after, high=MAX_WINDOW_S)
        if self.offline_severity not in SEVERITIES:
            raise DetectorConfigError(
                f"`offline_severity` must be one of {SEVERITIES}, got {self.offline_severity!r}"
            )
        if self.rate is not None and self.outlier is not None:
            short, long = sorted((self.rate.window, self.outlier.window))
            if long > WINDOW_BUCKETS * short:
                # Both share WINDOW_BUCKETS buckets of the longer window: a shorter one under a
                # bucket would measure over a bucket, not over itself.
                raise DetectorConfigError(
                    f"`rate.window` ({self.rate.window:g}) and `outlier.window` ({self.outlier.window:g})"
                    f" must be within a factor of {WINDOW_BUCKETS} of each other"
                )

    @property
    def enabled(self) -> bool:
        """Whether any detector is on."""
        return any(d is not None for d in (self.offline_after, self.stuck, self.rate, self.outlier))

    def to_yaml(self) -> dict[str, Any]:
        """The settings in the rules file's form (the keys a rule would carry); absent detectors left out.

        >>> DetectorConfig(offline_after=30.0, stuck=StuckConfig(0.05, 60.0)).to_yaml()
        {'offline_after': 30.0, 'offline_severity': 'critical', 'stuck': {'tolerance': 0.05, 'for': 60.0, 'severity': 'critical'}}
        """  # noqa: E501
        found: dict[str, Any] = {}
        if self.offline_after is not None:
            found["offline_after"] = self.offline_after
            found["offline_severity"] = self.offline_severity
        if self.stuck is not None:
            found["stuck"] = {
                "tolerance": self.stuck.tolerance,
                "for": self.stuck.stuck_for,
                "severity": self.stuck.severity,
            }
        if self.rate is not None:
            found["rate"] = {"window": self.rate.window, **self.rate.limits}
        if self.outlier is not None:
            found["outlier"] = {
                "window": self.outlier.window,
                **self.outlier.thresholds,
                "min_abs_deviation": self.outlier.min_abs_deviation,
                "min_samples": self.outlier.min_samples,
            }
        return found


NO_DETECTORS_CONFIG: Final = DetectorConfig()


@dataclass(frozen=True, slots=True)
class Breach:
    """How one reading breaches its rule: the highest severity crossed, and that severity's threshold."""

    rule_id: str
    severity: Severity
    condition: Condition
    threshold: float


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule. ``above``/``below`` map each configured severity to its threshold."""

    id: str
    devices: tuple[str, ...]
    metric: str
    above: Mapping[Severity, float]
    below: Mapping[Severity, float]
    hysteresis: float
    is_default: bool = False
    detectors: DetectorConfig = NO_DETECTORS_CONFIG
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One compiled regex for all globs: matching a device is one call, case-sensitive everywhere.
        regex = "|".join(f"(?:{fnmatch.translate(glob)})" for glob in self.devices)
        object.__setattr__(self, "_pattern", re.compile(regex))

    def matches(self, device_id: str, metric: str) -> bool:
        """Whether this rule applies to a reading of ``metric`` from ``device_id``."""
        return metric == self.metric and self._pattern.match(device_id) is not None

    def thresholds(self, condition: Condition) -> Mapping[Severity, float]:
        """The thresholds of ``condition`` (``above`` or ``below``), by severity."""
        return self.above if condition == "above" else self.below

    def classify(self, value: float) -> Breach | None:
        """The breach of ``value``: the highest severity first; at one severity ``above`` before ``below``."""
        for severity in reversed(SEVERITIES):
            for condition in CONDITIONS:
                threshold = self.thresholds(condition).get(severity)
                if threshold is None:
                    continue
                crossed = value > threshold if condition == "above" else value < threshold
                if crossed:
                    return Breach(self.id, severity, condition, threshold)
        return None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of one file, in match order, the default (if any) last."""

    rules: tuple[Rule, ...]
    source: str = "<string>"

    def rule_for(self, device_id: str, metric: str) -> Rule | None:
        """The first rule for this device and metric, else the default when its metric matches."""
        for rule in self.rules:
            if rule.matches(device_id, metric):
                return rule
        return None

    def classify(self, device_id: str, metric: str, value: float) -> Breach | None:
        """The scalar, obviously-right check of one reading: its breach, or None."""
        rule = self.rule_for(device_id, metric)
        return rule.classify(value) if rule is not None else None


# -- the file format, validated by msgspec ---------------------------------------------------------

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Glob = Annotated[str, msgspec.Meta(min_length=1)]


class _ThresholdsSpec(msgspec.Struct, forbid_unknown_fields=True):
    warning: float | None = None
    critical: float | None = None


class _StuckSpec(msgspec.Struct, forbid_unknown_fields=True):
    tolerance: float
    stuck_for: float = msgspec.field(name="for")
    severity: Severity = "critical"


class _RateSpec(msgspec.Struct, forbid_unknown_fields=True):
    window: float
    warning: float | None = None
    critical: float | None = None


class _OutlierSpec(msgspec.Struct, forbid_unknown_fields=True):
    window: float
    min_abs_deviation: float
    warning: float | None = None
    critical: float | None = None
    min_samples: int = 8


class _DetectorsSpec(msgspec.Struct, forbid_unknown_fields=True):
    """The detector keys a rule may carry, beside its thresholds."""

    offline_after: float | None = None
    offline_severity: Severity = "critical"
    stuck: _StuckSpec | None = None
    rate: _RateSpec | None = None
    outlier: _OutlierSpec | None = None


#: The keys of a rule (or the default) that configure device detectors.
DETECTOR_KEYS: Final = frozenset(field.name for field in msgspec.structs.fields(_DetectorsSpec))


def thresholds_only(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A rules file's content (as YAML loads it) without any detector keys: thresholds only.

    >>> thresholds_only({"rules": [{"id": "r", "offline_after": 30, "above": {"critical": 1}}]})
    {'rules': [{'id': 'r', 'above': {'critical': 1}}]}
    """

    def strip(rule: Mapping[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in rule.items() if key not in DETECTOR_KEYS}

    found = {**raw, "rules": [strip(rule) for rule in raw.get("rules", [])]}
    if "default" in raw:
        found["default"] = strip(raw["default"])
    return found


class _RuleSpec(_DetectorsSpec, forbid_unknown_fields=True, kw_only=True):
    id: _Id
    devices: _Glob | Annotated[list[_Glob], msgspec.Meta(min_length=1)]
    metric: _Id = DEFAULT_METRIC
    above: _ThresholdsSpec | None = None
    below: _ThresholdsSpec | None = None
    hysteresis: float = 0.0


class _DefaultSpec(_DetectorsSpec, forbid_unknown_fields=True, kw_only=True):
    id: _Id = "default"
    metric: _Id = DEFAULT_METRIC
    above: _ThresholdsSpec | None = None
    below: _ThresholdsSpec | None = None
    hysteresis: float = 0.0


class _FileSpec(msgspec.Struct, forbid_unknown_fields=True):
    version: Literal[1] = 1
    rules: list[Any] = msgspec.field(default_factory=list)
    default: Any = None


def _spec_error(where: str, exc: msgspec.ValidationError) -> str:
    # msgspec says "... - at `$.above.warning`"; name the field without the JSON-path sigil.
    return f"{where}: {str(exc).replace('`$.', '`').replace('`$`', 'the rule')}"


def _thresholds(label: str, condition: str, spec: _ThresholdsSpec | None) -> dict[Severity, float]:
    if spec is None:
        return {}
    found: dict[Severity, float] = {}
    for severity in SEVERITIES:
        threshold = getattr(spec, severity)
        if threshold is None:
            continue
        if not math.isfinite(threshold):
            raise RulesError(f"{label}: `{condition}.{severity}` must be a finite number, got {threshold!r}")
        found[severity] = float(threshold)
    if not found:
        raise RulesError(f"{label}: `{condition}` must set `warning` and/or `critical`")
    warning, critical = found.get("warning"), found.get("critical")
    if warning is not None and critical is not None:
        if condition == "above" and critical < warning:
            raise RulesError(f"{label}: `above.critical` ({critical}) must be >= `above.warning` ({warning})")
        if condition == "below" and critical > warning:
            raise RulesError(f"{label}: `below.critical` ({critical}) must be <= `below.warning` ({warning})")
    return found


def _limits_of(spec: _RateSpec | _OutlierSpec) -> dict[Severity, float]:
    return {s: getattr(spec, s) for s in SEVERITIES if getattr(spec, s) is not None}


def _detectors(label: str, spec: _DetectorsSpec) -> DetectorConfig:
    """The detectors of one rule; a bad value raises naming the rule and the key as the file spells it."""
    try:
        rate = outlier = None
        if spec.rate is not None:
            _check_limits("rate", limits := _limits_of(spec.rate))
            rate = RateConfig(window=spec.rate.window, limits=limits)
        if spec.outlier is not None:
            _check_limits("outlier", thresholds := _limits_of(spec.outlier))
            outlier = OutlierConfig(
                window=spec.outlier.window,
                thresholds=thresholds,
                min_abs_deviation=spec.outlier.min_abs_deviation,
                min_samples=spec.outlier.min_samples,
            )
        stuck = spec.stuck
        return DetectorConfig(
            offline_after=spec.offline_after,
            offline_severity=spec.offline_severity,
            stuck=None if stuck is None else StuckConfig(stuck.tolerance, stuck.stuck_for, stuck.severity),
            rate=rate,
            outlier=outlier,
        )
    except DetectorConfigError as exc:
        raise DetectorConfigError(f"{label}: {exc}") from None


def _rule(label: str, spec: _RuleSpec | _DefaultSpec, *, devices: tuple[str, ...], is_default: bool) -> Rule:
    detectors = _detectors(label, spec)
    if spec.above is None and spec.below is None and not detectors.enabled:
        raise RulesError(f"{label}: set `above` and/or `below` (or a detector)")
    if not math.isfinite(spec.hysteresis) or spec.hysteresis < 0:
        raise RulesError(f"{label}: `hysteresis` must be a finite number >= 0, got {spec.hysteresis!r}")
    return Rule(
        id=spec.id,
        devices=devices,
        metric=spec.metric,
        above=_thresholds(label, "above", spec.above),
        below=_thresholds(label, "below", spec.below),
        hysteresis=float(spec.hysteresis),
        is_default=is_default,
        detectors=detectors,
    )


def _rule_label(index: int, raw: Any) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("id"), str):
        return f"rule {raw['id']!r} (rules[{index}])"
    return f"rules[{index}]"


def parse_rules(text: str, *, source: str = "<string>") -> RuleSet:
    """Parse and validate a rules file's text; raise :class:`RulesError` naming the rule and the field."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    try:
        spec = msgspec.convert(raw, _FileSpec)
    except msgspec.ValidationError as exc:
        raise RulesError(f"{source}: {_spec_error('file', exc)}") from None

    rules: list[Rule] = []
    for index, raw_rule in enumerate(spec.rules):
        label = _rule_label(index, raw_rule)
        try:
            rule_spec = msgspec.convert(raw_rule, _RuleSpec)
        except msgspec.ValidationError as exc:
            raise RulesError(f"{source}: {_spec_error(label, exc)}") from None
        devices = (rule_spec.devices,) if isinstance(rule_spec.devices, str) else tuple(rule_spec.devices)
        rules.append(_rule(f"{source}: {label}", rule_spec, devices=devices, is_default=False))
    if spec.default is not None:
        label = "default rule"
        try:
            default_spec = msgspec.convert(spec.default, _DefaultSpec)
        except msgspec.ValidationError as exc:
            raise RulesError(f"{source}: {_spec_error(label, exc)}") from None
        rules.append(_rule(f"{source}: {label}", default_spec, devices=("*",), is_default=True))

    seen: dict[str, str] = {}
    for index, rule in enumerate(rules):
        where = "default rule" if rule.is_default else f"rules[{index}]"
        if rule.id in seen:
            raise RulesError(f"{source}: rule {rule.id!r} ({where}): `id` is also used by {seen[rule.id]}")
        seen[rule.id] = where
    return RuleSet(rules=tuple(rules), source=source)


def load_rules(path: Path) -> RuleSet:
    """Read and validate a rules file; raise :class:`RulesError` naming the rule and the field."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc}") from None
    return parse_rules(text, source=str(path))
