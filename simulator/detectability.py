"""Which injected anomalies a detector could catch, decided from the anomaly alone.

An anomaly as scored (:class:`InjectedAnomaly`) carries what the simulator knows of it
without looking at the pipeline: its kind, device, when it started (the publish time of its
first tick) and how long it lasted *within the run*, its magnitude, the noise of the
device's profile, and whether one of the readings it made crossed a threshold (the ground
truth of :mod:`thermoflow.simulator.truth`). :func:`detectable` applies the predicate of its kind
(:data:`PREDICATES`, stated word for word in the report) with the detector settings of the
device's rule: the same :class:`~thermoflow.rules.DetectorConfig` the processors run, read from the
same rules file by :mod:`thermoflow.rules` (:func:`rule_detectors`).

The predicates leave out what no detector can see: a spike smaller than the noise, a
dropout shorter than ``offline_after``, a stuck period shorter than ``stuck.for``, and what
a dropout of the same device hid (a stuck period or a drift judged only by the readings the
device published, a dropout starting inside another one). Recall is
reported over all injected anomalies too, so a predicate that is too lenient shows as a gap
between the two recalls, and one that is too strict cannot hide a miss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from thermoflow.rules import NO_DETECTORS_CONFIG as OFF
from thermoflow.rules import WINDOW_BUCKETS, DetectorConfig, RuleSet
from thermoflow.simulator.anomalies import Anomaly, Kind

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

#: The kinds scored here: ``malformed`` is no device condition (see ``delivery.deadletter``).
SCORED_KINDS: Final[tuple[Kind, ...]] = ("spike", "drift", "stuck", "dropout", "flapping")

PREDICATES: Final[dict[Kind, str]] = {
    "spike": (
        "a reading of it crosses a threshold (ground truth); or the rule has `outlier`, the device"
        " published it (not silent in a dropout), |magnitude| > k x the profile's noise_sigma with"
        " k = the rule's lowest outlier score, |magnitude| >"
        " outlier.min_abs_deviation, and it starts at least outlier.window into the run"
    ),
    "drift": (
        "a reading of it crosses a threshold (ground truth); or the rule has `rate`,"
        " 60 x (|magnitude| - 2 x the profile's noise_sigma) / max(published_s, rate.window + step) >"
        " the rule's lowest rate limit (degC/min), step being the detectors' history bucket (the longer"
        " of the rate and outlier windows / 32: the rate is measured over at least rate.window and less"
        " than rate.window + step),"
        " and the device has published for at least rate.window by the drift's end; magnitude is the"
        " offset at its last published reading, published_s the seconds from its first published"
        " reading to one period after its last (a dropout of the device can silence part of it)"
    ),
    "stuck": (
        "the rule has `stuck` and its published stuck readings span at least stuck.for:"
        " published_s - 1/rate >= stuck.for (published_s as for drift: a dropout can silence part of it)"
    ),
    "dropout": (
        "the rule has `offline_after`, duration_s >= offline_after (the device is silent"
        " duration_s + 1/rate between readings), the device published before it, and it began a"
        " silence (it did not start inside another dropout of the device: one silence, one incident)"
    ),
    "flapping": "a reading of it crosses a threshold (ground truth)",
}


#: A drift's offset must beat its rate limit by this many noise sigmas: one that beats it only by
#: the noise is a coin toss for any detector.
DRIFT_NOISE_SIGMAS: Final = 2.0


class InjectedAnomaly(msgspec.Struct, frozen=True, kw_only=True):
    """One injected anomaly as scored: times in epoch seconds, clipped to the run's publishing."""

    kind: Kind
    device_id: str
    rule_id: str | None
    start_at: float  # the publish time of its first tick
    duration_s: float  # within the run: an anomaly cut short by the run's end counts what was published
    magnitude: float  # as published: a drift cut short by the run's end counts the offset it reached
    start_s: float  # seconds from the run's first tick to its start
    period_s: float  # seconds between a device's readings (1 / rate)
    noise_sigma: float  # °C, the profile's stationary noise
    crossed: bool  # a reading published during it breached a threshold
    # A dropout of the same device can silence part of it. Seconds from its first published reading
    # to one period after its last (0: the device published none of it; None: all of it, duration_s).
    published_s: float | None = None
    # A dropout that starts while the device is already silent in another one begins no silence of
    # its own: one silence, one offline incident, which the first dropout is scored on.
    shadowed: bool = False

    @property
    def end_at(self) -> float:
        return self.start_at + self.duration_s

    @property
    def readings_s(self) -> float:
        """Seconds of it the device published: ``published_s``, or ``duration_s`` when that is None."""
        return self.duration_s if self.published_s is None else self.published_s


def rule_detectors(rules: RuleSet) -> dict[str, DetectorConfig]:
    """The detectors of each rule (the default too), by rule id: what the predicates judge by."""
    return {rule.id: rule.detectors for rule in rules.rules}


def history_step(detectors: DetectorConfig) -> float:
    """Seconds between the readings rate and outlier keep (0: neither is on): the longer window / 32.

    >>> from thermoflow.rules import RateConfig
    >>> history_step(DetectorConfig(rate=RateConfig(window=64.0, limits={"warning": 1.0})))
    2.0
    """
    windows = [c.window for c in (detectors.rate, detectors.outlier) if c is not None]
    return max(windows) / WINDOW_BUCKETS if windows else 0.0


def detectable(anomaly: InjectedAnomaly, detectors: DetectorConfig) -> bool:
    """Whether ``anomaly`` is one the device's detectors (or thresholds) can catch; see :data:`PREDICATES`.

    >>> drop = InjectedAnomaly(kind="dropout", device_id="f-1", rule_id="f", start_at=100.0,
    ...     duration_s=45.0, magnitude=0.0, start_s=100.0, period_s=1.0, noise_sigma=0.6, crossed=False)
    >>> [detectable(drop, DetectorConfig(offline_after=after)) for after in (30.0, 60.0)]
    [True, False]
    """
    a, d = anomaly, detectors
    if a.kind == "spike":
        outlier = d.outlier
        return a.crossed or (
            outlier is not None
            and a.readings_s > 0
            and abs(a.magnitude) > outlier.lowest * a.noise_sigma
            and abs(a.magnitude) > outlier.min_abs_deviation
            and a.start_s >= outlier.window
        )
    if a.kind == "drift":
        rate = d.rate
        return a.crossed or (
            rate is not None
            and a.readings_s > 0
            and 60.0
            * (abs(a.magnitude) - DRIFT_NOISE_SIGMAS * a.noise_sigma)
            / max(a.readings_s, rate.window + history_step(d))
            > rate.lowest
            and a.start_s + a.duration_s >= rate.window
        )
    if a.kind == "stuck":
        return d.stuck is not None and a.readings_s - a.period_s >= d.stuck.stuck_for
    if a.kind == "dropout":
        return (
            d.offline_after is not None
            and a.duration_s >= d.offline_after
            and a.start_s >= a.period_s
            and not a.shadowed
        )
    if a.kind == "flapping":
        return a.crossed
    return False


def judge(anomalies: Sequence[InjectedAnomaly], detectors: Mapping[str, DetectorConfig]) -> list[bool]:
    """:func:`detectable` of each anomaly, with its rule's detectors (off for a device without a rule)."""
    return [detectable(a, detectors.get(a.rule_id, OFF) if a.rule_id else OFF) for a in anomalies]


def crossed(
    *, devices: Ints, start_at: Floats, end_at: Floats, breach_devices: Ints, breach_ts: Floats
) -> Ints:
    """Per anomaly, 1 if some breaching reading of its device has ``start_at <= ts < end_at``, else 0.

    >>> crossed(devices=np.array([0, 0, 1]), start_at=np.array([10.0, 20.0, 10.0]),
    ...     end_at=np.array([12.0, 21.0, 30.0]), breach_devices=np.array([0, 1]),
    ...     breach_ts=np.array([11.0, 5.0])).tolist()
    [1, 0, 0]
    """
    order = np.lexsort((breach_ts, breach_devices))
    dev, ts = breach_devices[order], breach_ts[order]
    found = np.zeros(devices.size, dtype=np.int64)
    for i, (device, start, end) in enumerate(
        zip(devices.tolist(), start_at.tolist(), end_at.tolist(), strict=True)
    ):
        lo, hi = (
            int(np.searchsorted(dev, device, side="left")),
            int(np.searchsorted(dev, device, side="right")),
        )
        first = lo + int(np.searchsorted(ts[lo:hi], start, side="left"))
        found[i] = int(first < hi and ts[first] < end)
    return found


def _reached(anomaly: Anomaly, ticks: int) -> float:
    """The magnitude reached before tick ``ticks``: a drift ramps to its magnitude over its whole duration."""
    if anomaly.kind != "drift" or anomaly.end <= ticks:
        return anomaly.magnitude
    published = max(1, ticks - anomaly.start)
    return anomaly.magnitude * published / (anomaly.end - anomaly.start)


def injected_anomalies(
    *,
    anomalies: Sequence[Anomaly],
    started_at: Sequence[float],
    device_ids: Sequence[str],
    rule_ids: Sequence[str | None],
    noise_sigma: Floats,
    rate: float,
    ticks: int,
    breach_devices: Ints,
    breach_ts: Floats,
) -> list[InjectedAnomaly]:
    """The scored form of the engine's anomalies (``malformed`` left out).

    ``started_at`` is the publish time of each anomaly's first tick, ``ticks`` how many ticks
    the run published (an anomaly is clipped to them), ``rule_ids`` and ``noise_sigma`` are
    per device, ``breach_*`` the ground truth's breaching readings (device index, ts).
    """
    kept = [(a, t) for a, t in zip(anomalies, started_at, strict=True) if a.kind in SCORED_KINDS]
    if not kept:
        return []
    period = 1.0 / rate
    devices = np.array([a.device for a, _ in kept], dtype=np.int64)
    starts = np.array([t for _, t in kept], dtype=np.float64)
    lengths = np.array([max(1, min(a.end, ticks) - a.start) for a, _ in kept], dtype=np.float64)
    durations = lengths * period
    # A reading of the anomaly's last tick is published up to one period after that tick began.
    hit = crossed(
        devices=devices, start_at=starts, end_at=starts + durations + period,
        breach_devices=breach_devices, breach_ts=breach_ts,
    )  # fmt: skip
    silences: dict[int, list[tuple[int, int, int]]] = {}  # per device, its dropouts' (ticks [start, end), n)
    for n, (a, _) in enumerate(kept):
        if a.kind == "dropout":
            silences.setdefault(a.device, []).append((a.start, min(a.end, ticks), n))
    scored = []
    for n, ((a, t), duration, h) in enumerate(zip(kept, durations.tolist(), hit.tolist(), strict=True)):
        silent = silences.get(a.device, [])
        shadowed = False
        published_s: float | None = None
        last = min(a.end, ticks)  # one past the last tick published
        if (
            a.kind == "dropout"
        ):  # inside another dropout: that one (the earlier, or first listed) began the silence
            shadowed = any(s < a.start < e or (s == a.start and other < n) for s, e, other in silent)
        else:
            span = published_span(a.start, min(a.end, ticks), [(s, e) for s, e, _ in silent])
            if span is None:
                published_s = 0.0
            elif span != (a.start, last - 1):
                published_s = (span[1] - span[0] + 1) * period
                last = span[1] + 1
        scored.append(
            InjectedAnomaly(
                kind=a.kind,
                device_id=device_ids[a.device],
                rule_id=rule_ids[a.device],
                start_at=t,
                duration_s=float(duration),
                magnitude=_reached(a, last),
                start_s=a.start * period,
                period_s=period,
                noise_sigma=float(noise_sigma[a.device]),
                crossed=bool(h),
                published_s=published_s,
                shadowed=shadowed,
            )
        )
    return scored


def published_span(start: int, end: int, silences: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """The first and last of the ticks ``[start, end)`` outside every silence ``[s, e)``; None if none is.

    >>> published_span(10, 100, [(0, 20), (60, 200)]), published_span(10, 100, [(5, 100)])
    ((20, 59), None)
    """
    first, last = start, end - 1
    moved = True
    while moved and first <= last:
        moved = False
        for s, e in silences:
            if s <= first < e:
                first, moved = e, True
            if s <= last < e:
                last, moved = s - 1, True
    return (first, last) if first <= last else None
