"""Detectors benchmark: the pure stuck/rate/outlier scan and the offline check, beside the threshold check.

    .venv/bin/python bench/bench_detectors.py [--devices 1000] [--batch 100000] [--batches 20]

A fleet of ``--devices`` devices publishing once a second (noise around each profile's level;
1% of them frozen, 1% warming at 3 °C/min, a spike now and then) is cut into batches of
``--batch`` readings, which the detectors scan in order, carrying the state, as a worker would.
In the same run and on the same batches it times ``thermoflow.processors.thresholds.evaluate`` (the
baseline) and prints both rates and their ratio. Every detector is on for every device.
Decoding, state (de)serialization and Kafka are excluded here; the state round trip through
bytes is timed on its own line, per device, since a worker pays it per device and batch.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from thermoflow.processors.detectors import (
    DetectorConfig,
    DeviceStates,
    OutlierConfig,
    RateConfig,
    Readings,
    StuckConfig,
    compile_detectors,
    detect,
    offline,
)
from thermoflow.processors.thresholds import ReadingColumns, compile_rules, evaluate
from thermoflow.rules import DEFAULT_RULES_FILE, load_rules

LEVELS = {"freezer": -19.0, "coldroom": 4.0, "rack": 25.0, "greenhouse": 22.0}
START = 1_764_000_000.0


def fleet(devices: int, seconds: int, *, seed: int = 7) -> tuple[Readings, list[str]]:
    """``seconds`` of 1 Hz readings from ``devices`` devices, in arrival order (time-major)."""
    rng = np.random.default_rng(seed)
    names = [f"{profile}-{d:05d}" for d in range(devices) for profile in [list(LEVELS)[d % len(LEVELS)]]]
    level = np.array([LEVELS[name.split("-")[0]] for name in names])
    device = np.tile(np.arange(devices, dtype=np.int64), seconds)
    ts = START + np.repeat(np.arange(seconds, dtype=np.float64), devices) + rng.random(device.size) * 0.9
    value = level[device] + rng.normal(0.0, 0.2, device.size)
    frozen = device % 100 == 1
    value[frozen] = level[device[frozen]]
    warming = device % 100 == 2
    value[warming] += (ts[warming] - START) * (3.0 / 60.0)
    spikes = rng.random(device.size) < 0.001
    value[spikes] += 5.0
    return Readings(device=device, ts=ts, received_at=ts + 0.005, value=value), names


def split(readings: Readings, size: int) -> list[Readings]:
    """Consecutive batches of ``size`` readings, each with device indices local to the batch."""
    batches = []
    for start in range(0, len(readings), size):
        part = slice(start, start + size)
        batches.append(
            Readings(
                device=readings.device[part],
                ts=readings.ts[part],
                received_at=readings.received_at[part],
                value=readings.value[part],
            )
        )
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()

    seconds = args.batch * args.batches // args.devices
    readings, names = fleet(args.devices, seconds)
    batches = split(readings, args.batch)
    config = compile_detectors(
        [
            DetectorConfig(
                offline_after=30.0,
                stuck=StuckConfig(tolerance=0.05, stuck_for=60.0),
                rate=RateConfig(window=60.0, limits={"warning": 1.5, "critical": 3.0}),
                outlier=OutlierConfig(
                    window=60.0, thresholds={"warning": 6.0, "critical": 10.0}, min_abs_deviation=1.0
                ),
            )
        ]
    )
    rows = np.zeros(args.devices, dtype=np.int64)

    # The worker's state covers the batch's devices; here every batch holds every device, so
    # the batch-local index is the fleet index and the state is carried whole.
    states = DeviceStates.empty(args.devices)
    detect(batches[0], states=states, config=config, rows=rows)  # warm up
    fired: dict[str, int] = {}
    started = time.perf_counter()
    for batch in batches:
        found, states = detect(batch, states=states, config=config, rows=rows)
        for row in range(len(found)):
            fired[found.kind_name(row)] = fired.get(found.kind_name(row), 0) + 1
    detectors_rate = len(readings) / (time.perf_counter() - started)

    started = time.perf_counter()
    ticks = 1000
    for tick in range(ticks):
        offline(
            now=float(readings.received_at[-1]) + tick * 0.01,
            last_seen=states.last_seen,
            reported=states.offline_reported,
            config=config,
            rows=rows,
        )
    offline_seconds = (time.perf_counter() - started) / ticks

    rules = compile_rules(load_rules(DEFAULT_RULES_FILE))
    columns = [
        ReadingColumns(
            device_ids=names,
            metrics=["temperature"] * len(names),
            pair=batch.device,
            values=batch.value,
            ts=batch.ts,
        )
        for batch in batches
    ]
    evaluate(columns[0], rules)  # warm the per-device rule cache, as a running worker has
    started = time.perf_counter()
    for column in columns:
        evaluate(column, rules)
    thresholds_rate = len(readings) / (time.perf_counter() - started)

    started = time.perf_counter()
    blobs = states.to_bytes()
    DeviceStates.from_bytes(blobs)
    round_trip = (time.perf_counter() - started) / args.devices

    print(f"{len(batches)} batches of {args.batch:,} readings, {args.devices:,} devices, every detector on")
    print(f"detectors (stuck + rate + outlier, state carried): {detectors_rate:,.0f} readings/s")
    print(f"thresholds (processors.thresholds.evaluate):        {thresholds_rate:,.0f} readings/s")
    print(f"ratio detectors / thresholds: {detectors_rate / thresholds_rate:.2f}")
    print(f"offline check over {args.devices:,} devices: {offline_seconds * 1e6:,.0f} µs per tick")
    size = np.mean([len(blob) for blob in blobs])
    print(f"state to bytes and back: {round_trip * 1e6:.1f} µs per device, {size:.0f} B per device")
    print(f"detections: {dict(sorted(fired.items()))}")


if __name__ == "__main__":
    main()
