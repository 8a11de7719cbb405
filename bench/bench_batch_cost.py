"""What a batch costs the processor's function, fixed and per reading, at a steady fleet's batch sizes.

    .venv/bin/python bench/bench_batch_cost.py [--devices 1000] [--sizes 50,500,2000] [--seconds 10]

The worker's own function (``thresholds``: decode, the threshold check and every device detector,
with the shipped ``processors/rules.yaml``) runs on batches cut from a fleet publishing 5 readings
a second per device, as the worker gets them at a steady rate: ``batch_wait`` (100 ms) of readings
is 500 at 5,000 readings/s and 2,000 at 20,000/s. The state stays in memory (no Kafka, no writes).
For each size it prints the CPU per batch and per reading, and a least-squares fit of the two
parts: a fixed cost per batch and a cost per reading. Baseline, in the same run and on the same
batches: the decode and the threshold check alone (the stateless function).

Set beside the processor's whole CPU per reading under `thermoflow run` (``bench_pipeline.py``),
it tells how much of it the function is and how much the machinery around it (Kafka fetches,
faust, sends, commits, state writes).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from thermoflow.events import Reading, encode
from thermoflow.processors.columns import RawRecord, decode_batch
from thermoflow.processors.detection import DeviceDetectors
from thermoflow.processors.functions import AlertCheck, ThresholdCheck
from thermoflow.processors.settings import ProcessorSettings
from thermoflow.processors.state import StateStore
from thermoflow.processors.watcher import RulesWatcher

PROFILES = {"freezer": -19.0, "coldroom": 4.0, "rack": 25.0, "greenhouse": 22.0, "outdoor": 10.0}
PARTITIONS = 12
START = 1_764_000_000.0
Batch = tuple[list[RawRecord], np.ndarray[Any, Any]]


def fleet_batches(devices: int, size: int, count: int, *, seed: int = 7) -> list[Batch]:
    """``count`` batches of ``size`` readings, devices taking turns, 5 readings/s each."""
    rng = np.random.default_rng(seed)
    names = list(PROFILES)
    ids = [f"{names[d % len(names)]}-{d:05d}" for d in range(devices)]
    levels = [PROFILES[names[d % len(names)]] for d in range(devices)]
    batches: list[Batch] = []
    n = 0
    for _ in range(count):
        records = []
        for _ in range(size):
            d = n % devices
            ts = START + n / (devices * 5.0)
            value = float(levels[d] + rng.normal(0.0, 0.3))
            reading = Reading(device_id=ids[d], value=value, ts=ts, received_at=ts + 0.01)
            records.append(RawRecord(ids[d].encode(), encode(reading), d % PARTITIONS, n))
            n += 1
        batches.append((records, np.array([r.partition for r in records], dtype=np.int64)))
    return batches


def function(settings: ProcessorSettings, *, detectors: bool) -> Callable[[Any], Any]:
    watcher = RulesWatcher(settings.rules_path, interval=1e9)
    if not detectors:
        return ThresholdCheck(watcher, window=settings.alert_window)
    store = StateStore(settings, topic="bench-state")
    store.mark_loaded(range(PARTITIONS))  # in memory: no Kafka
    check = DeviceDetectors(
        store, source_topic="bench-readings", ingest_silent_after=settings.ingest_silent_after
    )
    return AlertCheck(watcher, check, window=settings.alert_window)


def cpu_per_batch(fn: Callable[[Any], Any], batches: Sequence[Batch], *, warm: int) -> float:
    """CPU seconds per batch over ``batches[warm:]`` (decode + function), after ``warm`` batches."""
    for records, partitions in batches[:warm]:
        fn(decode_batch("bench-readings", records, partitions)[0])
    started = time.process_time()
    for records, partitions in batches[warm:]:
        fn(decode_batch("bench-readings", records, partitions)[0])
    return (time.process_time() - started) / (len(batches) - warm)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--sizes", default="50,500,2000", help="readings per batch, comma-separated")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="of readings timed per size (at 5/s a device)"
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.devices < 1 or not sizes or min(sizes) < 1 or args.seconds <= 0:
        parser.error("--devices, --sizes and --seconds must be positive")
    settings = ProcessorSettings()
    fits: dict[str, list[tuple[int, float]]] = {"every detector": [], "thresholds only": []}
    for size in sizes:
        count = max(20, int(args.seconds * args.devices * 5 / size))
        warm = max(5, count // 5)
        batches = fleet_batches(args.devices, size, count + warm)
        for label, detectors in (("every detector", True), ("thresholds only", False)):
            per_batch = cpu_per_batch(function(settings, detectors=detectors), batches, warm=warm)
            fits[label].append((size, per_batch))
            print(
                f"{label:16} {size:>6,} readings a batch: {per_batch * 1e3:7.3f} ms CPU per batch,"
                f" {per_batch / size * 1e6:6.2f} µs per reading"
            )
    if len(sizes) > 1:
        print("fit, CPU = fixed per batch + per reading x readings:")
        fit = {}
        for label, points in fits.items():
            slope, fixed = fit[label] = np.polyfit([s for s, _ in points], [c for _, c in points], 1)
            print(f"  {label:16} {fixed * 1e3:6.3f} ms per batch + {slope * 1e6:5.2f} µs per reading")
        (slope, fixed), (base_slope, base_fixed) = fit["every detector"], fit["thresholds only"]
        print(
            f"the detectors add {(fixed - base_fixed) * 1e3:.3f} ms per batch and"
            f" {(slope - base_slope) * 1e6:.2f} µs per reading ({slope / base_slope:.2f}x per reading)"
        )


if __name__ == "__main__":
    main()
