"""Device profiles and the fleet's healthy signal, generated for every device at once per tick.

A device's temperature is ``baseline + daily cycle + correlated noise``, kept within its
profile's normal range so that a healthy fleet breaches no rule (anomalies, applied after,
are what cross thresholds). It is folded back at the range's bounds, not clipped: a clipped
sensor would sit flat on a bound, which a stuck detector rightly flags. The noise is an
AR(1) process per device mixed with an AR(1) process shared by every device of the same
profile (a site's weather, a machine room's load), so readings are correlated in time and
across devices. Its correlation time is in seconds, so the statistics do not depend on the
publish rate.

Everything is a function of the seed and the tick index: the same seed gives the same
values whatever the wall clock does.

>>> fleet = Fleet.build(devices=5, seed=1)
>>> fleet.device_ids
('freezer-0001', 'coldroom-0001', 'rack-0001', 'greenhouse-0001', 'outdoor-0001')
>>> signal = SignalModel(fleet, rate=1.0, seed=1, start=0.0)
>>> values = signal.tick(0)
>>> bool(((values >= fleet.low) & (values <= fleet.high)).all())
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]


@dataclass(frozen=True)
class Profile:
    """What one kind of device measures when nothing is wrong."""

    name: str
    baseline: float  # °C, the mean of the normal range's middle
    daily_amplitude: float  # °C, half the day/night swing
    peak_hour: float  # UTC hour of the daily maximum
    noise_sigma: float  # °C, stationary standard deviation of the noise
    correlation_s: float  # seconds, the noise's correlation time
    shared: float  # 0..1, share of the noise variance common to the profile's devices
    baseline_spread: float  # °C, per-device offset of the baseline (std)
    low: float  # the normal range: the healthy signal is clipped to it
    high: float


PROFILES: Final[dict[str, Profile]] = {
    p.name: p
    for p in (
        Profile("freezer", -19.0, 0.8, 11.0, 0.6, 120.0, 0.3, 0.7, -22.0, -16.0),
        Profile("coldroom", 4.0, 0.6, 12.0, 0.35, 90.0, 0.3, 0.4, 2.0, 6.0),
        Profile("rack", 25.0, 1.8, 16.0, 0.7, 60.0, 0.5, 1.0, 20.0, 30.0),
        Profile("greenhouse", 23.0, 5.5, 13.0, 0.8, 300.0, 0.7, 0.8, 15.0, 32.0),
        Profile("outdoor", 12.0, 7.0, 15.0, 1.2, 600.0, 0.8, 4.0, -10.0, 35.0),
    )
}


class FleetError(ValueError):
    """A fleet description that cannot be built (unknown profile, bad weight)."""


def parse_mix(text: str) -> dict[str, float]:
    """Parse ``--profiles``: ``freezer,rack`` (equal shares) or ``freezer=3,rack=1`` (weights).

    >>> parse_mix("freezer=3,rack")
    {'freezer': 3.0, 'rack': 1.0}
    """
    mix: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, weight = part.partition("=")
        if name not in PROFILES:
            raise FleetError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
        try:
            share = float(weight) if sep else 1.0
        except ValueError:
            raise FleetError(f"profile weight must be a number, got {part!r}") from None
        if not (math.isfinite(share) and share >= 0):
            raise FleetError(f"profile weight must be >= 0, got {part!r}")
        mix[name] = share
    if not mix or sum(mix.values()) <= 0:
        raise FleetError(f"no profile with a positive weight in {text!r}")
    return mix


@dataclass(frozen=True)
class Fleet:
    """The devices: ids, profile of each, and per-device constants as arrays."""

    device_ids: tuple[str, ...]
    profile_index: Ints  # index into `profiles`
    profiles: tuple[Profile, ...]
    baseline: Floats
    amplitude: Floats
    peak_hour: Floats
    low: Floats
    high: Floats

    @classmethod
    def build(cls, *, devices: int, seed: int, mix: dict[str, float] | None = None) -> Fleet:
        """``devices`` devices spread over the profiles by weight, round-robin so any prefix is mixed.

        Ids are ``<profile>-NNNN``, numbered from 1 within each profile.
        """
        if devices < 1:
            raise FleetError(f"a fleet needs at least one device, got {devices}")
        weights = mix or dict.fromkeys(PROFILES, 1.0)
        profiles = tuple(PROFILES[name] for name, w in weights.items() if w > 0)
        shares = np.array([weights[p.name] for p in profiles], dtype=np.float64)
        shares /= shares.sum()
        # Smooth weighted round robin: deterministic, and every prefix follows the weights.
        credit = np.zeros(len(profiles))
        order = np.empty(devices, dtype=np.int64)
        for i in range(devices):
            credit += shares
            pick = int(np.argmax(credit))
            credit[pick] -= 1.0
            order[i] = pick
        numbers = [0] * len(profiles)
        ids = []
        for pick in order.tolist():
            numbers[pick] += 1
            ids.append(f"{profiles[pick].name}-{numbers[pick]:04d}")
        rng = np.random.default_rng([seed, 0x5EED])
        spread = np.array([profiles[i].baseline_spread for i in order])
        lows = np.array([profiles[i].low for i in order])
        highs = np.array([profiles[i].high for i in order])
        baseline = np.array([profiles[i].baseline for i in order]) + rng.normal(0.0, 1.0, devices) * spread
        # Keep each device's mean well inside its normal range.
        margin = (highs - lows) * 0.25
        baseline = np.clip(baseline, lows + margin, highs - margin)
        return cls(
            device_ids=tuple(ids),
            profile_index=order,
            profiles=profiles,
            baseline=baseline,
            amplitude=np.array([profiles[i].daily_amplitude for i in order]),
            peak_hour=np.array([profiles[i].peak_hour for i in order]),
            low=lows,
            high=highs,
        )

    def __len__(self) -> int:
        return len(self.device_ids)

    def profile_of(self, device: int) -> Profile:
        return self.profiles[int(self.profile_index[device])]


class SignalModel:
    """The healthy signal of every device, one vectorized step per tick.

    Ticks must be asked for in order (the noise is a process with memory); the value of
    tick ``k`` depends only on the seed and ``k``.
    """

    def __init__(self, fleet: Fleet, *, rate: float, seed: int, start: float, time_scale: float = 1.0):
        self.fleet = fleet
        self.rate = rate
        self.start = start
        self.time_scale = time_scale
        self._rng = np.random.default_rng([seed, 0x516])
        dt = time_scale / rate
        profiles = fleet.profiles
        index = fleet.profile_index
        tau = np.array([p.correlation_s for p in profiles])
        self._phi_profile = np.exp(-dt / tau)
        self._phi = self._phi_profile[index]
        sigma = np.array([p.noise_sigma for p in profiles])
        shared = np.array([p.shared for p in profiles])
        self._shared_sigma = sigma * np.sqrt(shared)  # per profile
        self._own_sigma = (sigma * np.sqrt(1.0 - shared))[index]  # per device
        # Start the noise in its stationary distribution, so there is no warm-up transient.
        self._own = self._rng.normal(0.0, 1.0, len(fleet)) * self._own_sigma
        self._shared = self._rng.normal(0.0, 1.0, len(profiles)) * self._shared_sigma
        self._next = 0

    def time_of(self, tick: int) -> float:
        """The simulated epoch time of a tick (the daily cycle's clock)."""
        return self.start + tick * self.time_scale / self.rate

    def tick(self, tick: int) -> Floats:
        """The healthy values of every device at ``tick`` (°C, within the normal range)."""
        if tick != self._next:
            raise ValueError(f"ticks must come in order: expected {self._next}, got {tick}")
        self._next += 1
        if tick > 0:
            n = len(self.fleet)
            innovation = np.sqrt(1.0 - self._phi**2)
            self._own = self._phi * self._own + innovation * self._own_sigma * self._rng.normal(0.0, 1.0, n)
            shared_innovation = np.sqrt(1.0 - self._phi_profile**2) * self._shared_sigma
            self._shared = self._phi_profile * self._shared + shared_innovation * self._rng.normal(
                0.0, 1.0, self._shared.size
            )
        hours = (self.time_of(tick) / 3600.0) % 24.0
        cycle = self.fleet.amplitude * np.cos(2.0 * np.pi * (hours - self.fleet.peak_hour) / 24.0)
        noise = self._own + self._shared[self.fleet.profile_index]
        values = self.fleet.baseline + cycle + noise
        # Folded back at the normal range's bounds (reflected, as often as it takes), not
        # clipped: a clipped sensor sits exactly on a bound, flat, for as long as the noise
        # stays beyond it: a healthy device that looks stuck.
        low, width = self.fleet.low, self.fleet.high - self.fleet.low
        folded: Floats = low + width - np.abs(np.mod(values - low, 2.0 * width) - width)
        return folded
