"""Scoring a run: delivery (loss, duplicates), latency percentiles, and alert precision and recall.

Pure: arrays and ``AlertEvent`` structs in, plain dicts (report sections) out.

**Alert precision.** Alerts are de-duplicated by ``alert_id`` first (a redelivered alert is
a *duplicate*, not a false alert). A unique alert is *correct* when the reading it names
(``device_id`` and ``reading_ts``) was published by this run and truly breaches the alert's
``rule_id`` at exactly the alert's ``severity`` and ``condition``. precision = correct / unique.

**Alert recall.** Over S-episodes (see :mod:`thermoflow.simulator.truth`): an S-episode is *detected*
when some correct alert of its device and rule, with severity >= S, names one of its
readings. recall = detected episodes / episodes, over both levels, and per level in
``recall_by_severity``. Undetected episodes are listed as ``missed``.

With ``--format number`` the payload carries no timestamp: the bridge stamps readings with
its receive time, so an alert is matched to a published breach of the same device with the
same value (the latest one published before the alert's ``reading_ts``).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from thermoflow.events import AlertEvent
from thermoflow.simulator.truth import RANK, Breach, Episode

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
KeyMode = Literal["seq", "ts", "count"]

_MAX_LISTED = 50


def percentiles(seconds: Sequence[float] | Floats) -> dict[str, float | int] | None:
    """p50/p95/p99/max in milliseconds, and the sample count; None without samples."""
    values = np.asarray(seconds, dtype=np.float64)
    if values.size == 0:
        return None
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50_ms": round(float(p50) * 1000, 3),
        "p95_ms": round(float(p95) * 1000, 3),
        "p99_ms": round(float(p99) * 1000, 3),
        "max_ms": round(float(values.max()) * 1000, 3),
        "samples": int(values.size),
    }


def _keys(mode: KeyMode, devices: Ints, seqs: Ints, ts: Floats, origin: float) -> Ints:
    if mode == "seq":
        return (devices << 32) | seqs
    micros = np.round((ts - origin) * 1e6).astype(np.int64)
    return (devices << 40) | micros


def delivery(
    *,
    mode: KeyMode,
    published: tuple[Ints, Ints, Floats],
    received: tuple[Ints, Ints, Floats],
    origin: float,
) -> dict[str, Any]:
    """Loss and duplicates of ``received`` against ``published`` (device index, seq, ts arrays).

    ``seq`` mode keys readings by (device, seq), ``ts`` mode by (device, ts to the microsecond);
    ``count`` mode (no key survives the trip) compares counts per device only, so a duplicate
    can hide a loss: ``duplicates`` is then None.

    >>> pub = (np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([1.0, 2.0, 1.0]))
    >>> got = (np.array([0, 0, 0]), np.array([0, 0, 1]), np.array([1.0, 1.0, 2.0]))
    >>> d = delivery(mode="seq", published=pub, received=got, origin=0.0)
    >>> d["lost"], d["duplicates"], d["lost_by_device"]
    (1, 1, {1: 1})
    """
    pub_dev, pub_seq, pub_ts = published
    got_dev, got_seq, got_ts = received
    expected = int(pub_dev.size)
    if mode == "count":
        n = int(max(pub_dev.max(initial=-1), got_dev.max(initial=-1))) + 1
        want = np.bincount(pub_dev, minlength=n)
        have = np.bincount(got_dev, minlength=n)
        short = np.maximum(want - have, 0)
        return {
            "key": mode,
            "expected": expected,
            "received": int(got_dev.size),
            "unique": None,
            "lost": int(short.sum()),
            "duplicates": None,
            "unexpected": int(np.maximum(have - want, 0).sum()),
            "lost_by_device": {int(d): int(short[d]) for d in np.flatnonzero(short)[:_MAX_LISTED]},
        }
    pub_keys = np.unique(_keys(mode, pub_dev, pub_seq, pub_ts, origin))
    got_keys = _keys(mode, got_dev, got_seq, got_ts, origin)
    known = np.isin(got_keys, pub_keys)
    matched = got_keys[known]
    unique = np.unique(matched)
    lost_keys = pub_keys[~np.isin(pub_keys, unique)]
    shift = 32 if mode == "seq" else 40
    lost_devices, lost_counts = np.unique(lost_keys >> shift, return_counts=True)
    return {
        "key": mode,
        "expected": expected,
        "received": int(got_keys.size),
        "unique": int(unique.size),
        "lost": int(lost_keys.size),
        "duplicates": int(matched.size - unique.size),
        "unexpected": int(got_keys.size - matched.size),
        "lost_by_device": {
            int(d): int(c) for d, c in zip(lost_devices[:_MAX_LISTED], lost_counts[:_MAX_LISTED], strict=True)
        },
    }


@dataclass(frozen=True)
class _Truth:
    breach: Breach
    episodes: dict[str, int]  # level -> episode index


class AlertScorer:
    """Matches alerts to ground-truth breaches and episodes."""

    def __init__(self, *, breaches: Sequence[Breach], episodes: Sequence[Episode], by_value: bool = False):
        self.episodes = list(episodes)
        self.by_value = by_value
        # Per (device, rule, level): episode start times, for bisecting a reading into its episode.
        self._starts: dict[tuple[str, str, str], list[tuple[float, int]]] = defaultdict(list)
        for i, episode in enumerate(self.episodes):
            self._starts[(episode.device_id, episode.rule_id, episode.level)].append((episode.first_ts, i))
        for starts in self._starts.values():
            starts.sort()
        self._by_ts: dict[tuple[str, float], Breach] = {(b.device_id, b.ts): b for b in breaches}
        self._by_value: dict[tuple[str, float], list[Breach]] = defaultdict(list)
        if by_value:
            for b in breaches:
                self._by_value[(b.device_id, b.value)].append(b)

    def _breach_for(self, alert: AlertEvent) -> Breach | None:
        if not self.by_value:
            return self._by_ts.get((alert.device_id, alert.reading_ts))
        candidates = self._by_value.get((alert.device_id, alert.value), [])
        earlier = [b for b in candidates if b.ts <= alert.reading_ts]
        return earlier[-1] if earlier else None

    def _episode_of(self, breach: Breach, level: str) -> int | None:
        starts = self._starts.get((breach.device_id, breach.rule_id, level))
        if not starts:
            return None
        i = bisect.bisect_right(starts, (breach.ts, len(self.episodes))) - 1
        if i < 0:
            return None
        index = starts[i][1]
        return index if self.episodes[index].last_ts >= breach.ts else None

    def score(self, alerts: Iterable[AlertEvent]) -> dict[str, Any]:
        """The report's ``alerts`` section: the threshold alerts (``above``/``below``) only; the
        detectors' are scored against the injected anomalies (:mod:`thermoflow.simulator.detection`)."""
        received = 0
        unique: dict[str, AlertEvent] = {}
        for alert in alerts:
            if alert.condition not in ("above", "below"):
                continue
            received += 1
            unique.setdefault(alert.alert_id, alert)
        correct = 0
        false: list[dict[str, Any]] = []
        detected: set[int] = set()
        for alert in unique.values():
            breach = self._breach_for(alert)
            ok = (
                breach is not None
                and breach.rule_id == alert.rule_id
                and breach.severity == alert.severity
                and breach.condition == alert.condition
            )
            if not ok:
                false.append(
                    {
                        "device_id": alert.device_id,
                        "rule_id": alert.rule_id,
                        "severity": alert.severity,
                        "reading_ts": alert.reading_ts,
                        "value": alert.value,
                        "truth": None
                        if breach is None
                        else {
                            "rule_id": breach.rule_id,
                            "severity": breach.severity,
                            "condition": breach.condition,
                        },
                    }
                )
                continue
            assert breach is not None
            correct += 1
            for level, rank in RANK.items():
                if RANK[alert.severity] >= rank:
                    episode = self._episode_of(breach, level)
                    if episode is not None:
                        detected.add(episode)
        by_level: dict[str, dict[str, Any]] = {}
        for level in RANK:
            total = [i for i, e in enumerate(self.episodes) if e.level == level]
            found = sum(1 for i in total if i in detected)
            by_level[level] = {
                "episodes": len(total),
                "detected": found,
                "recall": round(found / len(total), 6) if total else None,
            }
        missed = [e for i, e in enumerate(self.episodes) if i not in detected]
        n_unique = len(unique)
        return {
            "received": received,
            "unique": n_unique,
            "duplicates": received - n_unique,
            "correct": correct,
            "false_positives": n_unique - correct,
            "precision": round(correct / n_unique, 6) if n_unique else None,
            "episodes": len(self.episodes),
            "detected": len(detected),
            "missed_episodes": len(missed),
            "recall": round(len(detected) / len(self.episodes), 6) if self.episodes else None,
            "recall_by_severity": by_level,
            "missed": [
                {
                    "device_id": e.device_id,
                    "rule_id": e.rule_id,
                    "level": e.level,
                    "first_ts": e.first_ts,
                    "last_ts": e.last_ts,
                    "readings": e.readings,
                }
                for e in missed[:_MAX_LISTED]
            ],
            "false": false[:_MAX_LISTED],
        }
