"""The vectorized threshold check: a batch of readings as columns in, its breaches as columns out.

Pure numpy, no Python loop per reading. Rules compile to arrays indexed by rule
(:func:`compile_rules`); a batch names its distinct ``(device_id, metric)`` pairs once and
points each reading at one of them (:class:`ReadingColumns`), so the rule lookup runs per
distinct device, not per reading.

Per batch there is at most one breach per (device, rule) - a rule has one metric, so that is
one per ``(device_id, metric)`` - for its worst reading. Which reading is worst:

1. the highest severity crossed (``critical`` over ``warning``);
2. at equal severity, ``above`` over ``below`` (the tie-break when a device breaches both
   ways in one batch: a too-warm cold chain spoils goods, so ``above`` is reported);
3. the most extreme value: the largest for ``above``, the smallest for ``below``;
4. the earliest ``ts``, then the first in the batch (so a replayed batch picks the same
   reading and so yields the same ``alert_id``).

A single reading that crosses both ``above`` and ``below`` (only possible with overlapping
thresholds) is classified like :meth:`thermoflow.rules.Rule.classify`: severity first, then
``above``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from thermoflow.events import SEVERITIES, Condition, Severity
from thermoflow.rules import RuleSet

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

NO_RULE: Final = -1
#: Severity codes in the output: the index into SEVERITIES plus one (0 means no breach).
_WARNING, _CRITICAL = 1, 2
_ABOVE, _BELOW = 0, 1
CONDITION_NAMES: Final[tuple[Condition, ...]] = ("above", "below")


@dataclass(frozen=True, eq=False)
class CompiledRules:
    """A :class:`RuleSet` as arrays: row ``r`` holds rule ``r``'s thresholds.

    An absent threshold is +inf for ``above`` and -inf for ``below``, which no finite value
    crosses (comparisons are strict).
    """

    ruleset: RuleSet
    rule_ids: tuple[str, ...]
    #: shape (rules, 2): columns warning, critical
    above: F64
    below: F64
    _rule_of: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    # The same answers by metric, then device id: a batch of one metric looks its devices up by
    # their string (whose hash is cached), no (device, metric) tuple built and hashed per pair.
    _by_metric: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    _last: list[Any] = field(default_factory=list, repr=False)

    def rule_index(self, device_id: str, metric: str) -> int:
        """The row of the rule for this device and metric, or ``NO_RULE``; cached per pair."""
        pair = (device_id, metric)
        found = self._rule_of.get(pair)
        if found is None:
            rule = self.ruleset.rule_for(device_id, metric)
            found = NO_RULE if rule is None else self.ruleset.rules.index(rule)
            if (
                len(self._rule_of) < 1_000_000
            ):  # bounded: a fleet of ids never seen again can't grow it forever
                self._rule_of[pair] = found
                self._by_metric.setdefault(metric, {})[device_id] = found
        return found

    def rule_indices(self, device_ids: Sequence[str], metrics: Sequence[str]) -> I64:
        """The rule row of each ``(device_id, metric)`` pair, ``NO_RULE`` where none applies.

        The last answer is kept: the threshold check and the detectors ask it for the same
        batch's pairs (the same list objects), and it costs a dict lookup per pair.
        """
        last = self._last
        if last and last[0] is device_ids and last[1] is metrics:
            cached: I64 = last[2]
            return cached
        try:  # every pair seen before (a running worker's usual batch): the lookups loop in C
            metric = single_metric(metrics)
            if metric is not None and metric in self._by_metric:
                lookup = map(self._by_metric[metric].__getitem__, device_ids)
            else:
                lookup = map(self._rule_of.__getitem__, zip(device_ids, metrics, strict=True))
            rows = np.fromiter(lookup, dtype=np.int64, count=len(device_ids))
        except KeyError:
            rows = np.fromiter(
                (self.rule_index(d, m) for d, m in zip(device_ids, metrics, strict=True)),
                dtype=np.int64,
                count=len(device_ids),
            )
        rows.flags.writeable = False  # shared between callers
        self._last[:] = [device_ids, metrics, rows]
        return rows


def single_metric(names: Sequence[str]) -> str | None:
    """The one metric of every pair, or None (none, or several). A batch of one metric names the
    same string object for each pair (:func:`thermoflow.processors.columns.decode_batch`), which
    ``list.count`` compares by identity first: a pass in C, no string compared.

    >>> single_metric(["t", "t"]), single_metric(["t", "h"]), single_metric([])
    ('t', None, None)
    """
    if not names:
        return None
    first = names[0]
    if isinstance(names, list):
        return first if names.count(first) == len(names) else None
    return first if all(name == first for name in names) else None


def compile_rules(ruleset: RuleSet) -> CompiledRules:
    """Compile validated rules to threshold arrays."""
    count = len(ruleset.rules)
    above = np.full((count, 2), np.inf)
    below = np.full((count, 2), -np.inf)
    for row, rule in enumerate(ruleset.rules):
        for column, severity in enumerate(SEVERITIES):
            if severity in rule.above:
                above[row, column] = rule.above[severity]
            if severity in rule.below:
                below[row, column] = rule.below[severity]
    return CompiledRules(
        ruleset=ruleset, rule_ids=tuple(rule.id for rule in ruleset.rules), above=above, below=below
    )


@dataclass(frozen=True, eq=False)
class ReadingColumns:
    """A batch of readings as columns.

    ``pair`` indexes ``device_ids``/``metrics`` (the batch's distinct pairs); ``values`` and
    ``ts`` are per reading.
    """

    device_ids: Sequence[str]
    metrics: Sequence[str]
    pair: I64
    values: F64
    ts: F64

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True, eq=False)
class Breaches:
    """The breaches of one batch, one row per (device, rule): columns over the batch's readings."""

    reading: I64  # index of the worst reading in the batch
    rule: I64  # row in CompiledRules
    severity: I64  # 1 warning, 2 critical
    condition: I64  # 0 above, 1 below
    threshold: F64

    def __len__(self) -> int:
        return int(self.reading.shape[0])

    def severity_name(self, row: int) -> Severity:
        return SEVERITIES[int(self.severity[row]) - 1]

    def condition_name(self, row: int) -> Condition:
        return CONDITION_NAMES[int(self.condition[row])]


def _empty() -> Breaches:
    none = np.empty(0, dtype=np.int64)
    return Breaches(none, none, none, none, np.empty(0))


def evaluate(batch: ReadingColumns, rules: CompiledRules, *, window: float | None = None) -> Breaches:
    """The breaches of a batch: at most one per (device, rule), for its worst reading.

    With ``window``, at most one per (device, rule) and per ``window`` seconds of device time
    (buckets ``floor(ts / window)``): a batch that spans a long stretch of time, a backlog
    after an outage, then still shows that the breach went on, instead of one alert for the
    whole stretch (which the incident lifecycle would read as a gap of that length).

    >>> from thermoflow.rules import parse_rules
    >>> rules = compile_rules(parse_rules("default: {above: {warning: 30, critical: 40}}"))
    >>> batch = ReadingColumns(device_ids=["a", "b"], metrics=["temperature"] * 2,
    ...     pair=np.array([0, 0, 1, 0]), values=np.array([31.0, 45.0, 30.0, 35.0]), ts=np.arange(4.0))
    >>> found = evaluate(batch, rules)
    >>> found.reading.tolist(), found.severity_name(0), found.threshold.tolist()
    ([1], 'critical', [40.0])
    """
    if len(batch) == 0 or len(rules.rule_ids) == 0:
        return _empty()
    pair_rule = rules.rule_indices(batch.device_ids, batch.metrics)
    rule = pair_rule[batch.pair]
    checked = np.flatnonzero(rule != NO_RULE)
    if checked.size == 0:
        return _empty()
    rule = rule[checked]
    values = batch.values[checked]

    above, below = rules.above[rule], rules.below[rule]
    severity_above = np.where(values > above[:, 1], _CRITICAL, np.where(values > above[:, 0], _WARNING, 0))
    severity_below = np.where(values < below[:, 1], _CRITICAL, np.where(values < below[:, 0], _WARNING, 0))
    is_above = severity_above >= severity_below  # classify(): severity first, then `above`
    severity = np.where(is_above, severity_above, severity_below)

    breached = np.flatnonzero(severity > 0)
    if breached.size == 0:
        return _empty()
    reading = checked[breached]
    rule, severity, is_above = rule[breached], severity[breached], is_above[breached]
    values = values[breached]
    extremity = np.where(is_above, values, -values)  # larger is worse, both ways
    pair = batch.pair[reading]
    ts = batch.ts[reading]
    bucket = np.zeros(reading.size, dtype=np.int64)
    if window is not None and ts.size and float(ts.max() - ts.min()) >= window:
        bucket = np.floor(ts / window).astype(np.int64)

    # lexsort: the last key sorts first. Worst first within each pair (and bucket), then keep
    # each group's first row.
    order = np.lexsort((reading, ts, -extremity, (~is_above).astype(np.int8), -severity, bucket, pair))
    sorted_pair, sorted_bucket = pair[order], bucket[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = (sorted_pair[1:] != sorted_pair[:-1]) | (sorted_bucket[1:] != sorted_bucket[:-1])
    worst = order[first]

    condition = np.where(is_above[worst], _ABOVE, _BELOW)
    column = severity[worst] - 1
    rows = rule[worst]
    threshold = np.where(condition == _ABOVE, rules.above[rows, column], rules.below[rows, column])
    return Breaches(
        reading=reading[worst].astype(np.int64),
        rule=rows.astype(np.int64),
        severity=severity[worst].astype(np.int64),
        condition=condition.astype(np.int64),
        threshold=threshold.astype(np.float64),
    )
