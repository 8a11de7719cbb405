"""Ground truth: which published readings breach which rule at which severity, and the episodes.

The rules are ``thermoflow.rules`` (the same file the processors load). Per device, the rule
that applies is fixed, so its thresholds are compiled once into arrays and each published
chunk is classified with array operations (:meth:`Thresholds.classify`), which is checked
against the scalar ``RuleSet.classify`` by a hypothesis test. Only breaching readings are
kept (a healthy fleet breaches nothing), plus what was sent malformed.

**Episodes** are what alert recall is scored on. Alerts leave the processors at most once
per (device, rule) per batch, for the batch's worst reading, so a single reading of a long
breach is not guaranteed its own alert; an *episode* is. For a severity level S, the
S-episodes of a (device, rule) are its readings that breach at S **or worse**, grouped so
that consecutive ones are at most ``incident_gap`` seconds apart. Any batch holding a
reading of an S-episode yields an alert of severity >= S whose reading is in that batch;
as long as a batch does not span more than ``incident_gap`` seconds of one device, that
reading belongs to the same episode. See :mod:`thermoflow.simulator.score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from thermoflow.events import SEVERITIES, Severity
from thermoflow.rules import RuleSet
from thermoflow.simulator.payloads import MALFORMED_KINDS, METRIC

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Small = NDArray[np.int8]

#: Severity ranks as stored: 0 = no breach, 1 = warning, 2 = critical.
RANK: Final[dict[str, int]] = {"warning": 1, "critical": 2}
CONDITION_NAMES: Final = ("above", "below")


@dataclass(frozen=True)
class Thresholds:
    """Each device's rule as arrays: ±inf where a threshold is not configured, rule -1 where none applies."""

    rule_ids: tuple[str, ...]
    rule_index: Ints
    warn_above: Floats
    crit_above: Floats
    warn_below: Floats
    crit_below: Floats

    @classmethod
    def compile(cls, rules: RuleSet, device_ids: Sequence[str], *, metric: str = METRIC) -> Thresholds:
        n = len(device_ids)
        rule_ids = tuple(rule.id for rule in rules.rules)
        position = {rule.id: i for i, rule in enumerate(rules.rules)}
        index = np.full(n, -1, dtype=np.int64)
        wa, ca = np.full(n, np.inf), np.full(n, np.inf)
        wb, cb = np.full(n, -np.inf), np.full(n, -np.inf)
        for i, device_id in enumerate(device_ids):
            rule = rules.rule_for(device_id, metric)
            if rule is None:
                continue
            index[i] = position[rule.id]
            wa[i] = rule.above.get("warning", np.inf)
            ca[i] = rule.above.get("critical", np.inf)
            wb[i] = rule.below.get("warning", -np.inf)
            cb[i] = rule.below.get("critical", -np.inf)
        return cls(rule_ids, index, wa, ca, wb, cb)

    def classify(self, devices: Ints, values: Floats) -> tuple[Small, Small, Floats]:
        """Severity rank (0/1/2), condition (0 above, 1 below) and threshold of each reading.

        The same order as ``Rule.classify``: the highest severity first, ``above`` before ``below``.
        """
        ca, cb = self.crit_above[devices], self.crit_below[devices]
        wa, wb = self.warn_above[devices], self.warn_below[devices]
        crit_up, crit_down = values > ca, values < cb
        warn_up, warn_down = values > wa, values < wb
        critical = crit_up | crit_down
        warning = ~critical & (warn_up | warn_down)
        rank = np.where(critical, 2, np.where(warning, 1, 0)).astype(np.int8)
        up = np.where(critical, crit_up, warn_up)
        condition = np.where(up, 0, 1).astype(np.int8)
        threshold = np.where(critical, np.where(crit_up, ca, cb), np.where(warn_up, wa, wb))
        return rank, condition, np.where(rank > 0, threshold, np.nan)

    def flap_levels(self, fallback: Floats) -> Floats:
        """Per device, the threshold a flapping sensor oscillates around: the lowest ``above`` one."""
        level = np.where(np.isfinite(self.warn_above), self.warn_above, self.crit_above)
        level = np.where(
            np.isfinite(level), level, np.where(np.isfinite(self.warn_below), self.warn_below, np.nan)
        )
        return np.where(np.isfinite(level), level, fallback)


class Breach(msgspec.Struct, frozen=True, array_like=True):
    """One breaching reading in the ground-truth file."""

    device_id: str
    seq: int
    ts: float
    value: float
    rule_id: str
    severity: Severity
    condition: str
    threshold: float


class Malformed(msgspec.Struct, frozen=True, array_like=True):
    device_id: str
    ts: float
    kind: str


class Episode(msgspec.Struct, frozen=True, kw_only=True):
    """A run of readings of one (device, rule) at ``level`` or worse, no more than incident_gap apart."""

    device_id: str
    rule_id: str
    level: Severity
    peak: Severity
    first_ts: float
    last_ts: float
    readings: int


@dataclass
class GroundTruth:
    """Collects breaches and malformed sends while the publisher runs."""

    thresholds: Thresholds | None
    device_ids: Sequence[str]
    keep: bool = True  # False: count only (a long run with no report to write)
    counts: dict[str, int] = field(default_factory=lambda: {"warning": 0, "critical": 0, "malformed": 0})
    _breach_chunks: list[tuple[Ints, Ints, Floats, Floats, Small, Small, Floats]] = field(
        default_factory=list
    )
    _malformed: list[tuple[int, float, int]] = field(default_factory=list)

    def record(self, devices: Ints, seqs: Ints, ts: Floats, values: Floats) -> int:
        """Classify a chunk of published readings; keep the breaching ones. Returns how many breached."""
        if self.thresholds is None or devices.size == 0:
            return 0
        rank, condition, threshold = self.thresholds.classify(devices, values)
        hit = np.flatnonzero(rank)
        if hit.size:
            critical = int(np.count_nonzero(rank == 2))
            self.counts["critical"] += critical
            self.counts["warning"] += int(hit.size) - critical
        if hit.size and self.keep:
            self._breach_chunks.append(
                (devices[hit], seqs[hit], ts[hit], values[hit], rank[hit], condition[hit], threshold[hit])
            )
        return int(hit.size)

    def breaching(self, values: Floats) -> NDArray[np.bool_] | None:
        """Per device, whether ``values`` (one per device of the fleet, in order) breach its rule.

        The publisher classifies a tick's values once and passes :meth:`record` only the
        readings that breach: the same breaches and counts as recording every reading, without a
        dozen numpy calls per chunk of a few readings. None without thresholds (nothing to record).
        """
        if self.thresholds is None:
            return None
        rank, _, _ = self.thresholds.classify(np.arange(values.size), values)
        return rank > 0

    def record_malformed(self, device: int, ts: float, variant: int) -> None:
        self.counts["malformed"] += 1
        if self.keep:
            self._malformed.append((device, ts, variant))

    @property
    def malformed_count(self) -> int:
        return self.counts["malformed"]

    @property
    def breach_count(self) -> int:
        return self.counts["warning"] + self.counts["critical"]

    def breach_arrays(self) -> tuple[Ints, Ints, Floats, Floats, Small, Small, Floats]:
        """(devices, seqs, ts, values, rank, condition, threshold) of every breach, in publish order."""
        if not self._breach_chunks:
            e = np.empty(0)
            return (e.astype(np.int64), e.astype(np.int64), e, e, e.astype(np.int8), e.astype(np.int8), e)
        parts = list(zip(*self._breach_chunks, strict=True))
        d, s, t, v, r, c, th = (np.concatenate(p) for p in parts)
        return d, s, t, v, r, c, th

    def breaches(self) -> list[Breach]:
        if self.thresholds is None:
            return []
        rule_ids = self.thresholds.rule_ids
        d, s, t, v, r, c, th = self.breach_arrays()
        rules = self.thresholds.rule_index[d]
        return [
            Breach(self.device_ids[di], si, ti, vi, rule_ids[ri], SEVERITIES[rk - 1], CONDITION_NAMES[ci], x)
            for di, si, ti, vi, ri, rk, ci, x in zip(
                d.tolist(), s.tolist(), t.tolist(), v.tolist(), rules.tolist(), r.tolist(), c.tolist(),
                th.tolist(), strict=True,
            )
        ]  # fmt: skip

    def malformed(self) -> list[Malformed]:
        return [
            Malformed(self.device_ids[d], ts, MALFORMED_KINDS[v % len(MALFORMED_KINDS)])
            for d, ts, v in self._malformed
        ]

    def episodes(self, *, incident_gap: float) -> list[Episode]:
        """Every S-episode for S in (warning, critical); see the module docstring."""
        if self.thresholds is None:
            return []
        d, _, t, _, r, _, _ = self.breach_arrays()
        return episodes_of(
            devices=d,
            ts=t,
            rank=r,
            rule_index=self.thresholds.rule_index,
            rule_ids=self.thresholds.rule_ids,
            device_ids=self.device_ids,
            incident_gap=incident_gap,
        )


def episodes_of(
    *,
    devices: Ints,
    ts: Floats,
    rank: Small,
    rule_index: Ints,
    rule_ids: Sequence[str],
    device_ids: Sequence[str],
    incident_gap: float,
) -> list[Episode]:
    """Group breaching readings into episodes per level (vectorized; a device's rule is fixed)."""
    found: list[Episode] = []
    for level, severity in ((1, "warning"), (2, "critical")):
        keep = np.flatnonzero(rank >= level)
        if not keep.size:
            continue
        order = keep[np.lexsort((ts[keep], devices[keep]))]
        dev, when, rk = devices[order], ts[order], rank[order]
        new = np.ones(dev.size, dtype=np.bool_)
        new[1:] = (dev[1:] != dev[:-1]) | (when[1:] - when[:-1] > incident_gap)
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], dev.size)
        peaks = np.maximum.reduceat(rk, starts)
        for a, b, peak in zip(starts.tolist(), ends.tolist(), peaks.tolist(), strict=True):
            device = int(dev[a])
            found.append(
                Episode(
                    device_id=device_ids[device],
                    rule_id=rule_ids[int(rule_index[device])],
                    level=severity,  # type: ignore[arg-type]
                    peak=SEVERITIES[peak - 1],
                    first_ts=float(when[a]),
                    last_ts=float(when[b - 1]),
                    readings=b - a,
                )
            )
    return found


class TruthFile(msgspec.Struct, kw_only=True):
    """The ground-truth file (``--ground-truth``), JSON.

    ``breaches`` rows are ``[device_id, seq, ts, value, rule_id, severity, condition, threshold]``;
    ``malformed`` rows are ``[device_id, ts, kind]``.
    """

    version: int = 1
    rules: str | None
    metric: str = METRIC
    incident_gap_s: float
    published: dict[str, int]  # readings (well-formed) per device
    breaches: list[Breach]
    malformed: list[Malformed]
    episodes: list[Episode]
    anomalies: list[dict[str, Any]]


def write_truth(path: Path, truth: TruthFile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.encode(truth))


def read_truth(path: Path) -> TruthFile:
    return msgspec.json.decode(path.read_bytes(), type=TruthFile)
