"""The device-detector settings of each rule, read from the raw rules file, for judging detectability.

The rules file (``processors/rules.yaml``, DESIGN.md "Rules") may give each rule, and the
``default``, device detectors beside its thresholds; every key is optional::

    rules:
      - id: freezer
        devices: "freezer-*"
        above: {warning: -12.0, critical: -8.0}
        offline_after: 30                            # s without a reading
        stuck: {tolerance: 0.05, for: 60}            # °C spread, s
        rate: {window: 60, warning: 1.5, critical: 3.0}                          # °C/min
        outlier: {window: 300, warning: 6, critical: 10, min_abs_deviation: 3.0}  # robust z, °C

The simulator reads them here from the YAML itself, not through ``thermoflow.rules``, so a
file without them (today's) and one with them both work: an absent key is a detector that
is off. A key that is present but unusable raises :class:`DetectorRulesError` naming the
rule and the field.

>>> found = detector_rules({"rules": [{"id": "freezer", "offline_after": 30,
...     "stuck": {"tolerance": 0.05, "for": 60}}], "default": {"above": {"warning": 35}}})
>>> found["freezer"].offline_after, found["freezer"].stuck, found["default"].rate
(30.0, Stuck(tolerance=0.05, stuck_for=60.0), None)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from thermoflow.events import SEVERITIES, Severity


class DetectorRulesError(ValueError):
    """A detector setting in the rules file that cannot be used; the message names the rule and field."""


@dataclass(frozen=True, slots=True)
class Stuck:
    """The value stays within ``tolerance`` (°C, max - min) for ``stuck_for`` seconds."""

    tolerance: float
    stuck_for: float


@dataclass(frozen=True, slots=True)
class Rate:
    """``|°C/min|`` over at least ``window`` seconds beyond a limit per severity."""

    window: float
    limits: Mapping[Severity, float]

    @property
    def lowest(self) -> float:
        """The smallest limit that raises an incident (the warning one when set)."""
        return min(self.limits.values())


@dataclass(frozen=True, slots=True)
class Outlier:
    """Robust score over the last ``window`` s beyond a threshold per severity; deviation floor in °C."""

    window: float
    thresholds: Mapping[Severity, float]
    min_abs_deviation: float

    @property
    def lowest(self) -> float:
        """The smallest score that raises an incident."""
        return min(self.thresholds.values())


@dataclass(frozen=True, slots=True)
class Detectors:
    """The detectors of one rule; None: off."""

    offline_after: float | None = None
    stuck: Stuck | None = None
    rate: Rate | None = None
    outlier: Outlier | None = None

    def to_json(self) -> dict[str, Any]:
        """The settings as the report states them."""
        return {
            "offline_after": self.offline_after,
            "stuck": None
            if self.stuck is None
            else {"tolerance": self.stuck.tolerance, "for": self.stuck.stuck_for},
            "rate": None if self.rate is None else {"window": self.rate.window, **self.rate.limits},
            "outlier": None
            if self.outlier is None
            else {
                "window": self.outlier.window,
                **self.outlier.thresholds,
                "min_abs_deviation": self.outlier.min_abs_deviation,
            },
        }


OFF = Detectors()


def _number(where: str, value: Any, *, positive: bool = True) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise DetectorRulesError(f"{where} must be a finite number {bound}, got {value!r}")
    return float(value)


def _section(where: str, raw: Any) -> Mapping[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise DetectorRulesError(f"{where} must be a mapping, got {raw!r}")
    return raw


def _severities(label: str, name: str, section: Mapping[str, Any]) -> dict[Severity, float]:
    found = {
        s: _number(f"{label}: `{name}.{s}`", section[s]) for s in SEVERITIES if section.get(s) is not None
    }
    if not found:
        raise DetectorRulesError(f"{label}: `{name}` must set `warning` and/or `critical`")
    return found


def _detectors(label: str, rule: Mapping[str, Any]) -> Detectors:
    offline_after = rule.get("offline_after")
    stuck = _section(f"{label}: `stuck`", rule.get("stuck"))
    rate = _section(f"{label}: `rate`", rule.get("rate"))
    outlier = _section(f"{label}: `outlier`", rule.get("outlier"))
    stuck_for = None if stuck is None else stuck.get("for", stuck.get("stuck_for"))
    return Detectors(
        offline_after=None if offline_after is None else _number(f"{label}: `offline_after`", offline_after),
        stuck=None
        if stuck is None
        else Stuck(
            tolerance=_number(f"{label}: `stuck.tolerance`", stuck.get("tolerance"), positive=False),
            stuck_for=_number(f"{label}: `stuck.for`", stuck_for),
        ),
        rate=None
        if rate is None
        else Rate(
            window=_number(f"{label}: `rate.window`", rate.get("window")),
            limits=_severities(label, "rate", rate),
        ),
        outlier=None
        if outlier is None
        else Outlier(
            window=_number(f"{label}: `outlier.window`", outlier.get("window")),
            thresholds=_severities(label, "outlier", outlier),
            min_abs_deviation=_number(
                f"{label}: `outlier.min_abs_deviation`", outlier.get("min_abs_deviation", 0.0), positive=False
            ),
        ),
    )


def detector_rules(raw: Any, *, source: str = "<rules>") -> dict[str, Detectors]:
    """The detectors of every rule of a parsed rules file (``yaml.safe_load``), by rule id.

    Rules without detectors map to :data:`OFF`; entries that are not mappings are skipped
    (``thermoflow.rules`` is the one that rejects those).
    """
    if not isinstance(raw, Mapping):
        return {}
    found: dict[str, Detectors] = {}
    rules = raw.get("rules") or []
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        if isinstance(rule, Mapping) and isinstance(rule.get("id"), str):
            found[rule["id"]] = _detectors(f"{source}: rule {rule['id']!r} (rules[{index}])", rule)
    default = raw.get("default")
    if isinstance(default, Mapping):
        default_id = default.get("id", "default")
        found[str(default_id)] = _detectors(f"{source}: default rule", default)
    return found


def load_detector_rules(path: Path) -> dict[str, Detectors]:
    """:func:`detector_rules` of a rules file."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DetectorRulesError(f"{path}: cannot read the rules file: {exc}") from None
    return detector_rules(raw, source=str(path))
