"""The fleet as a stream of messages: signal, anomalies, sequence numbers, payloads, ground truth.

Pure (no sockets, no clock of its own): :meth:`Engine.take` is handed the publish time and
returns the next ``n`` *slots* of the schedule as messages. A slot is one device at one
tick; ticks are ``1/rate`` apart and devices are visited in index order within a tick, so
``n`` slots per call at a steady pace spread the fleet's messages evenly. A slot whose
device is offline (dropout) yields no message; a malformed one yields garbage.

Per device, ``seq`` counts the well-formed readings it published, from 0, without gaps;
``ts`` is the publish time in epoch seconds, rounded to the microsecond and strictly
increasing per device, so ``(device_id, ts)`` and ``(device_id, seq)`` are both unique keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from thermoflow.simulator.anomalies import Anomaly, Injector
from thermoflow.simulator.payloads import PayloadFormat
from thermoflow.simulator.profiles import Fleet, SignalModel
from thermoflow.simulator.truth import GroundTruth

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

#: Sensor resolution: published values are rounded to this many decimals.
DECIMALS = 2
#: Anomalies kept for the report and the ground truth (a day of a big fleet has millions).
MAX_KEPT_ANOMALIES = 100_000


@dataclass
class Batch:
    """Messages for consecutive slots, grouped so each device's messages keep their order."""

    devices: Ints  # one per message
    payloads: list[bytes]
    readings: int = 0
    malformed: int = 0


@dataclass
class PublishedKeys:
    """What was published, kept when the run is measured: device index, seq and ts per reading."""

    devices: list[Ints] = field(default_factory=list)
    seqs: list[Ints] = field(default_factory=list)
    ts: list[Floats] = field(default_factory=list)

    def arrays(self) -> tuple[Ints, Ints, Floats]:
        if not self.devices:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        return np.concatenate(self.devices), np.concatenate(self.seqs), np.concatenate(self.ts)


class Engine:
    """Turns slots into messages, recording what the load test needs to score the pipeline."""

    def __init__(
        self,
        *,
        fleet: Fleet,
        signal: SignalModel,
        injector: Injector,
        payload_format: PayloadFormat,
        truth: GroundTruth,
        seed: int,
        keep_keys: bool = False,
    ):
        self.fleet = fleet
        self.signal = signal
        self.injector = injector
        self.format = payload_format
        self.truth = truth
        self.seed = seed
        self.keys = PublishedKeys() if keep_keys else None
        n = len(fleet)
        self.seq = np.zeros(n, dtype=np.int64)
        self.malformed_sent = np.zeros(n, dtype=np.int64)
        self.last_ts = np.full(n, -np.inf)
        self.tick = -1
        self.slots = 0  # slots taken so far
        self.skipped = 0  # slots of offline devices
        self.anomalies: list[Anomaly] = []
        self.anomaly_started_at: list[float] = []  # per kept anomaly: the publish time its first tick began
        self._pos = n  # position within the current tick; n means "start the next tick"
        self._values: Floats = np.empty(0)
        self._publish = np.empty(0, dtype=np.bool_)
        self._malformed = np.empty(0, dtype=np.bool_)
        self._breaching: NDArray[np.bool_] | None = None

    def _next_tick(self, now: float) -> None:
        self.tick += 1
        values = self.signal.tick(self.tick)
        effects = self.injector.apply(self.tick, values)
        if len(self.anomalies) < MAX_KEPT_ANOMALIES:
            self.anomalies.extend(effects.started)
            self.anomaly_started_at.extend([now] * len(effects.started))
        self._values = np.round(values, DECIMALS)
        self._breaching = self.truth.breaching(self._values)
        self._publish = effects.publish & ~effects.malformed
        self._malformed = effects.publish & effects.malformed
        self._pos = 0

    def take(self, n: int, now: float) -> Batch:
        """The messages of the next ``n`` slots, stamped ``now`` (epoch seconds)."""
        devices: list[Ints] = []
        payloads: list[bytes] = []
        readings = malformed = 0
        stamp = round(now, 6)
        size = len(self.fleet)
        while n > 0:
            if self._pos >= size:
                self._next_tick(stamp)
            first = self._pos
            last = min(size, first + n)
            n -= last - first
            self._pos = last
            self.slots += last - first
            publish = self._publish[first:last]
            bad = self._malformed[first:last]
            idx = first + np.flatnonzero(publish)
            self.skipped += (last - first) - int(idx.size) - int(np.count_nonzero(bad))
            if idx.size:
                ts = np.round(np.maximum(self.last_ts[idx] + 1e-6, stamp), 6).astype(np.float64)
                self.last_ts[idx] = ts
                seqs = self.seq[idx].copy()
                self.seq[idx] += 1
                values = self._values[idx]
                if self._breaching is not None:
                    hit = np.flatnonzero(self._breaching[idx])
                    if hit.size:
                        self.truth.record(idx[hit], seqs[hit], ts[hit], values[hit])
                if self.keys is not None:
                    self.keys.devices.append(idx)
                    self.keys.seqs.append(seqs)
                    self.keys.ts.append(ts)
                chunk = self.format.readings(values.tolist(), ts.tolist(), seqs.tolist())
                readings += len(chunk)
            else:
                chunk = []
            if bad.any():
                # Rare: merge the garbage into device order (the order per connection matters).
                bad_idx = first + np.flatnonzero(bad)
                garbage = []
                for device in bad_idx.tolist():
                    variant = (self.seed * 7919 + device * 104729 + self.tick) % 1_000_003
                    garbage.append(self.format.malformed(variant, stamp))
                    self.truth.record_malformed(device, stamp, variant)
                    self.malformed_sent[device] += 1
                malformed += len(garbage)
                merged = np.concatenate([idx, bad_idx])
                order = np.argsort(merged, kind="stable")
                both = chunk + garbage
                devices.append(merged[order])
                payloads.extend(both[i] for i in order.tolist())
            else:
                devices.append(idx)
                payloads.extend(chunk)
        all_devices = np.concatenate(devices) if devices else np.empty(0, np.int64)
        return Batch(devices=all_devices, payloads=payloads, readings=readings, malformed=malformed)
