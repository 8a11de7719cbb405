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
    default:
      id: default
      above: {warning: 35.0, critical: 45.0}

A reading breaches ``above`` at severity S when ``value > threshold_S`` and ``below`` when
``value < threshold_S`` (strictly); its severity is the highest one crossed.

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


class _RuleSpec(msgspec.Struct, forbid_unknown_fields=True):
    id: _Id
    devices: _Glob | Annotated[list[_Glob], msgspec.Meta(min_length=1)]
    metric: _Id = DEFAULT_METRIC
    above: _ThresholdsSpec | None = None
    below: _ThresholdsSpec | None = None
    hysteresis: float = 0.0


class _DefaultSpec(msgspec.Struct, forbid_unknown_fields=True):
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


def _rule(label: str, spec: _RuleSpec | _DefaultSpec, *, devices: tuple[str, ...], is_default: bool) -> Rule:
    if spec.above is None and spec.below is None:
        raise RulesError(f"{label}: set `above` and/or `below`")
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
