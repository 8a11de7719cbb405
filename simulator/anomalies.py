"""Anomalies: what goes wrong with devices, when, and how it changes what they publish.

Kinds:

- ``spike``: one reading (or a few) far off, up or down.
- ``drift``: an offset that grows linearly to ``magnitude`` over the duration, then vanishes.
- ``stuck``: the sensor repeats the value it had when it got stuck.
- ``dropout``: the device publishes nothing (offline) for the duration.
- ``flapping``: the value alternates just above and just below a threshold every tick.
- ``malformed``: the device publishes garbage instead of its reading (dead-letter path).

A schedule comes from a rate (``anomalies_per_hour`` per device, split over the kinds) or
from an explicit list (``--anomaly-schedule FILE``), or both. Rate-driven events are drawn
per *epoch* of ticks from a generator seeded with ``(seed, epoch)``, so the schedule is the
same under the same seed however long the run is and whatever the wall clock does.

Everything here is pure numpy; :meth:`Injector.apply` changes one tick of values in place.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import msgspec
import numpy as np
import yaml
from numpy.typing import NDArray

from thermoflow.simulator.profiles import Fleet

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]

Kind = Literal["spike", "drift", "stuck", "dropout", "flapping", "malformed"]
KINDS: Final[tuple[Kind, ...]] = ("spike", "drift", "stuck", "dropout", "flapping", "malformed")
_KIND_CODE: Final = {kind: code for code, kind in enumerate(KINDS)}


class AnomalyError(ValueError):
    """A bad anomaly flag or schedule file; the message names the entry and the field."""


@dataclass(frozen=True)
class KindModel:
    """How long an anomaly of a kind lasts and how big it is (uniform ranges)."""

    duration_s: tuple[float, float]
    magnitude: tuple[float, float]  # °C; a random sign is drawn for spike and drift
    weight: float  # share of the anomaly rate


MODELS: Final[dict[Kind, KindModel]] = {
    "spike": KindModel((0.0, 0.0), (15.0, 30.0), 3.0),  # 0 s: a single reading
    "drift": KindModel((30.0, 180.0), (12.0, 25.0), 1.0),
    "stuck": KindModel((30.0, 300.0), (0.0, 0.0), 1.0),
    "dropout": KindModel((10.0, 120.0), (0.0, 0.0), 1.0),
    "flapping": KindModel((10.0, 60.0), (0.3, 1.5), 1.0),
    "malformed": KindModel((0.0, 0.0), (0.0, 0.0), 1.0),
}


class Anomaly(msgspec.Struct, frozen=True, kw_only=True):
    """One scheduled anomaly: ``kind`` on ``device`` for ticks ``[start, end)``."""

    kind: Kind
    device: int
    start: int
    end: int
    magnitude: float = 0.0


@dataclass
class Schedule:
    """Rate-driven anomalies drawn epoch by epoch, plus explicit ones."""

    devices: int
    rate: float  # ticks per second
    seed: int
    per_hour: float = 0.0  # anomalies per device per hour, over all enabled kinds
    kinds: Mapping[Kind, float] = field(default_factory=lambda: {k: MODELS[k].weight for k in KINDS})
    explicit: Sequence[Anomaly] = ()
    epoch_ticks: int = 0  # 0: about a minute of ticks

    def __post_init__(self) -> None:
        if self.epoch_ticks <= 0:
            self.epoch_ticks = max(1, round(60.0 * self.rate))

    def epoch(self, index: int) -> list[Anomaly]:
        """The anomalies that start in epoch ``index`` (ticks ``[index*E, (index+1)*E)``), by start."""
        first = index * self.epoch_ticks
        last = first + self.epoch_ticks
        events = [a for a in self.explicit if first <= a.start < last]
        if self.per_hour > 0 and self.kinds:
            total_weight = sum(self.kinds.values())
            epoch_s = self.epoch_ticks / self.rate
            for kind, weight in self.kinds.items():
                if weight <= 0:
                    continue
                model = MODELS[kind]
                rng = np.random.default_rng([self.seed, index, _KIND_CODE[kind], 0xA7])
                mean = self.per_hour * weight / total_weight * self.devices * epoch_s / 3600.0
                count = int(rng.poisson(mean))
                if not count:
                    continue
                devices = rng.integers(0, self.devices, count)
                starts = first + rng.integers(0, self.epoch_ticks, count)
                lengths = np.maximum(1, np.round(rng.uniform(*model.duration_s, count) * self.rate))
                magnitudes = rng.uniform(*model.magnitude, count)
                if kind in ("spike", "drift"):
                    magnitudes *= rng.choice([-1.0, 1.0], count)
                events.extend(
                    Anomaly(kind=kind, device=int(d), start=int(s), end=int(s + n), magnitude=float(m))
                    for d, s, n, m in zip(devices, starts, lengths, magnitudes, strict=True)
                )
        events.sort(key=lambda a: (a.start, a.device, _KIND_CODE[a.kind]))
        return events

    def between(self, first_tick: int, end_tick: int) -> list[Anomaly]:
        """Every anomaly starting in ``[first_tick, end_tick)``: what a run of that length injects."""
        found: list[Anomaly] = []
        for index in range(first_tick // self.epoch_ticks, (end_tick - 1) // self.epoch_ticks + 1):
            found.extend(a for a in self.epoch(index) if first_tick <= a.start < end_tick)
        return found


def parse_kinds(text: str) -> dict[Kind, float]:
    """``--anomaly-kinds``: which kinds share ``--anomaly-rate``, and in which proportions.

    ``all`` (the default shares), ``none``, ``spike,drift`` (their default shares) or
    ``spike=3,malformed=1`` (explicit shares).

    >>> parse_kinds("spike=3,malformed")
    {'spike': 3.0, 'malformed': 1.0}
    >>> parse_kinds("drift,stuck") == {"drift": 1.0, "stuck": 1.0}
    True
    """
    text = text.strip()
    if text in ("", "none"):
        return {}
    if text == "all":
        return {k: MODELS[k].weight for k in KINDS}
    kinds: dict[Kind, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, share = part.partition("=")
        if name not in KINDS:
            raise AnomalyError(f"unknown anomaly kind {name!r}; choose from {', '.join(KINDS)}")
        try:
            weight = float(share) if sep else MODELS[name].weight
        except ValueError:
            raise AnomalyError(f"anomaly kind share must be a number, got {part!r}") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise AnomalyError(f"anomaly kind share must be >= 0, got {part!r}")
        kinds[name] = weight
    return kinds


class _ScheduleEntry(msgspec.Struct, forbid_unknown_fields=True):
    kind: Kind
    device: str
    at: float  # seconds after the start
    duration: float = 0.0  # seconds; 0 is one reading
    magnitude: float | None = None


def load_schedule(path: Path, *, fleet: Fleet, rate: float) -> list[Anomaly]:
    """Read an explicit schedule: a YAML list of ``{kind, device, at, duration, magnitude}``.

    ``at`` and ``duration`` are seconds (converted to ticks at ``rate``); ``magnitude``
    defaults to the middle of the kind's range.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AnomalyError(f"cannot read anomaly schedule {path}: {exc}") from None
    if isinstance(raw, Mapping):
        raw = raw.get("anomalies")
    if not isinstance(raw, list):
        raise AnomalyError(f"{path}: expected a list of anomalies (or a mapping with `anomalies:`)")
    index = {device_id: i for i, device_id in enumerate(fleet.device_ids)}
    events = []
    for n, item in enumerate(raw):
        try:
            entry = msgspec.convert(item, _ScheduleEntry)
        except msgspec.ValidationError as exc:
            raise AnomalyError(f"{path}: anomaly #{n}: {exc}") from None
        if entry.device not in index:
            raise AnomalyError(f"{path}: anomaly #{n}: device {entry.device!r} is not in the fleet")
        if not (math.isfinite(entry.at) and entry.at >= 0 and math.isfinite(entry.duration)):
            raise AnomalyError(f"{path}: anomaly #{n}: `at` and `duration` must be finite seconds >= 0")
        model = MODELS[entry.kind]
        start = round(entry.at * rate)
        magnitude = entry.magnitude if entry.magnitude is not None else sum(model.magnitude) / 2
        events.append(
            Anomaly(
                kind=entry.kind,
                device=index[entry.device],
                start=start,
                end=start + max(1, round(entry.duration * rate)),
                magnitude=magnitude,
            )
        )
    return events


@dataclass
class TickEffects:
    """What the active anomalies did to one tick."""

    publish: Bools  # False: the device is offline this tick
    malformed: Bools  # True: the device sends garbage instead of its reading
    started: list[Anomaly] = field(default_factory=list)


class Injector:
    """Applies a :class:`Schedule` to the fleet's values, tick after tick (in order)."""

    def __init__(self, schedule: Schedule, *, flap_level: Floats):
        self.schedule = schedule
        self.flap_level = flap_level  # per device: the threshold flapping crosses
        self._active: list[Anomaly] = []
        self._held: dict[tuple[int, int], float] = {}  # stuck value per (device, start)
        self._epoch = -1
        self._upcoming: deque[Anomaly] = deque()
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)

    def apply(self, tick: int, values: Floats) -> TickEffects:
        """Change ``values`` (this tick's healthy values) in place; say who publishes what."""
        n = values.size
        effects = TickEffects(publish=np.ones(n, dtype=np.bool_), malformed=np.zeros(n, dtype=np.bool_))
        epoch = tick // self.schedule.epoch_ticks
        if epoch != self._epoch:
            self._epoch = epoch
            self._upcoming = deque(a for a in self.schedule.epoch(epoch) if a.start >= tick)
        while self._upcoming and self._upcoming[0].start <= tick:
            anomaly = self._upcoming.popleft()
            self._active.append(anomaly)
            effects.started.append(anomaly)
            self.counts[anomaly.kind] += 1
        self._active = [a for a in self._active if a.end > tick]
        for anomaly in self._active:  # few at a time, against n values: the loop is not the cost
            self._one(anomaly, tick, values, effects)
        return effects

    def _one(self, anomaly: Anomaly, tick: int, values: Floats, effects: TickEffects) -> None:
        device = anomaly.device
        if anomaly.kind == "spike":
            values[device] += anomaly.magnitude
        elif anomaly.kind == "drift":
            values[device] += anomaly.magnitude * (tick - anomaly.start + 1) / (anomaly.end - anomaly.start)
        elif anomaly.kind == "stuck":
            key = (device, anomaly.start)
            values[device] = self._held.setdefault(key, float(values[device]))
            if tick == anomaly.end - 1:
                del self._held[key]
        elif anomaly.kind == "flapping":
            side = 1.0 if (tick - anomaly.start) % 2 == 0 else -1.0
            values[device] = self.flap_level[device] + side * anomaly.magnitude
        elif anomaly.kind == "dropout":
            effects.publish[device] = False
        elif anomaly.kind == "malformed":
            effects.malformed[device] = True
