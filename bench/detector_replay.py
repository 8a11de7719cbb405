"""Replay the simulator's fleet through the pure detectors, offline: how the shipped rules score.

    .venv/bin/python bench/detector_replay.py                      # the demo fleet: 200 x 120 s, seed 7
    .venv/bin/python bench/detector_replay.py --devices 1000 --duration 3600 --anomaly-rate 0  # healthy
    .venv/bin/python bench/detector_replay.py --devices 1000 --duration 1800 --anomaly-rate 2

No MQTT, Kafka or clock: the simulator's own generator (:class:`SignalModel` and
:class:`Injector`, stepped as :class:`~thermoflow.simulator.engine.Engine` steps them, values
rounded to the sensor's resolution) makes one reading per device per second; the readings go
through :func:`thermoflow.processors.detectors.detect` a batch at a time with the detector
settings compiled from ``processors/rules.yaml``, and :func:`~thermoflow.processors.detectors.offline`
runs once per batch with the batch's time as the watermark. Thresholds are checked with the
simulator's ground truth (the same rules). Detections become incidents as the simulator's
report derives them from alerts (one per (device, rule, kind) while they come less than the
gap apart; every offline detection is one), and the simulator's own scoring
(:func:`~thermoflow.simulator.detection.score_detection`) judges them against the injected
anomalies with its detectability predicates.

What this leaves out: the pipeline's delays (detection delays here are event time), and the
real spread of one tick's readings over the second (here they share a timestamp).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from thermoflow.processors.detectors import (
    KINDS,
    DeviceStates,
    Readings,
    compile_detectors,
    detect,
    offline,
)
from thermoflow.rules import DEFAULT_RULES_FILE, RuleSet, load_rules
from thermoflow.simulator.anomalies import Injector, Schedule, parse_kinds
from thermoflow.simulator.detectability import injected_anomalies, judge, rule_detectors
from thermoflow.simulator.detection import Incident, _Windows, score_detection
from thermoflow.simulator.engine import DECIMALS
from thermoflow.simulator.profiles import Fleet, SignalModel
from thermoflow.simulator.truth import Thresholds

#: A fixed epoch start (the daily cycle's phase): 2025-11-24 15:00 UTC, near the warm peak.
START = 1_764_000_000.0
GAP_S = 30.0  # the simulator's episode gap: alerts of one (device, kind) closer than this are one incident
GRACE_S = 30.0


@dataclass
class Replay:
    """What one replay found: the scored section, plus the raw detections by kind for a look."""

    score: dict[str, Any]
    detections: dict[str, int]
    readings: int
    false_all: list[Incident]


def _incidents(alerts: Sequence[tuple[float, str, str]], *, gap: float) -> list[Incident]:
    """``(at, device_id, condition)`` alerts to incidents, as ``incidents_from_alerts`` groups them."""
    last: dict[tuple[str, str], float] = {}
    found: list[Incident] = []
    for at, device_id, condition in sorted(alerts):
        kind = "threshold" if condition in ("above", "below") else condition
        previous = last.get((device_id, kind))
        if previous is None or kind == "offline" or at - previous > gap:
            found.append(Incident(device_id, condition, at))
        last[(device_id, kind)] = at
    return found


def replay(
    *,
    devices: int = 200,
    duration: int = 120,
    seed: int = 7,
    anomaly_rate: float = 10.0,
    kinds: str = "all",
    batch_s: int = 1,
    rules: RuleSet | None = None,
    start: float = START,
    gap_s: float = GAP_S,
    grace_s: float = GRACE_S,
) -> Replay:
    """Generate ``duration`` seconds of the fleet at 1 reading/s per device and score the detectors.

    The defaults are ``thermoflow demo``'s fleet (200 devices, 120 s, seed 7, 10 anomalies per
    device-hour).
    """
    rules = rules or load_rules(DEFAULT_RULES_FILE)
    fleet = Fleet.build(devices=devices, seed=seed)
    thresholds = Thresholds.compile(rules, fleet.device_ids)
    schedule = Schedule(devices=devices, rate=1.0, seed=seed, per_hour=anomaly_rate, kinds=parse_kinds(kinds))
    injector = Injector(schedule, flap_level=thresholds.flap_levels(fleet.high + 2.0))
    signal = SignalModel(fleet, rate=1.0, seed=seed, start=start)

    by_rule = {rule.id: row for row, rule in enumerate(rules.rules)}
    config = compile_detectors([rule.detectors for rule in rules.rules])
    rows = np.array(
        [by_rule[rule.id] if (rule := rules.rule_for(d, "temperature")) else -1 for d in fleet.device_ids],
        dtype=np.int64,
    )
    states = DeviceStates.empty(devices)
    reported = np.full(devices, np.nan)
    alerts: list[tuple[float, str, str]] = []
    breach_devices: list[np.ndarray] = []
    breach_ts: list[np.ndarray] = []
    started_at: list[float] = []
    anomalies = []
    counts = dict.fromkeys(KINDS, 0)
    readings = 0
    for first in range(0, duration, batch_s):
        part_device, part_ts, part_value = [], [], []
        for tick in range(first, min(first + batch_s, duration)):
            values = signal.tick(tick)
            effects = injector.apply(tick, values)
            anomalies.extend(effects.started)
            started_at.extend([start + tick] * len(effects.started))
            publish = np.flatnonzero(effects.publish & ~effects.malformed)
            part_device.append(publish)
            part_ts.append(np.full(publish.size, start + tick))
            part_value.append(np.round(values, DECIMALS)[publish])
        device, ts, value = np.concatenate(part_device), np.concatenate(part_ts), np.concatenate(part_value)
        readings += device.size
        severity, condition, _ = thresholds.classify(device, value)
        hit = np.flatnonzero(severity > 0)
        breach_devices.append(device[hit])
        breach_ts.append(ts[hit])
        alerts.extend(
            (float(t), fleet.device_ids[d], ("above", "below")[c])
            for d, t, c in zip(device[hit].tolist(), ts[hit].tolist(), condition[hit].tolist(), strict=True)
        )
        batch = Readings(device=device, ts=ts, received_at=ts, value=value)
        found, new = detect(batch, states=states, config=config, rows=rows)
        states = new
        now = float(ts.max()) if ts.size else start + first
        for d, k in zip(found.device.tolist(), found.kind.tolist(), strict=True):
            alerts.append((now, fleet.device_ids[d], KINDS[k]))
            counts[KINDS[k]] += 1
        silent, reported = offline(
            now=now, last_seen=states.last_seen, reported=reported, config=config, rows=rows
        )
        for d in silent.device.tolist():
            alerts.append((now, fleet.device_ids[d], "offline"))
            counts["offline"] += 1

    rule_ids = [rules.rule_for(d, "temperature") for d in fleet.device_ids]
    noise = np.array([p.noise_sigma for p in fleet.profiles])[fleet.profile_index]
    scored = injected_anomalies(
        anomalies=anomalies,
        started_at=started_at,
        device_ids=fleet.device_ids,
        rule_ids=[r.id if r else None for r in rule_ids],
        noise_sigma=noise,
        rate=1.0,
        ticks=duration,
        breach_devices=np.concatenate(breach_devices),
        breach_ts=np.concatenate(breach_ts),
    )
    incidents = _incidents(alerts, gap=gap_s)
    score = score_detection(
        anomalies=scored,
        detectable=judge(scored, rule_detectors(rules)),
        incidents=incidents,
        grace_s=grace_s,
        device_hours=devices * duration / 3600.0,
    )
    # The section lists the first 50 false incidents; count them all by condition here.
    everything = score_detection(
        anomalies=scored,
        detectable=[False] * len(scored),
        incidents=incidents,
        grace_s=grace_s,
        device_hours=1.0,
    )["false_incidents"]["count"]
    windows = _Windows(scored, grace_s)
    false_all = [i for i in incidents if not windows.covers(i.device_id, i.opened_at)]
    assert len(false_all) == everything
    return Replay(score=score, detections=counts, readings=readings, false_all=false_all)


def _table(result: Replay) -> str:
    header = ("kind", "inj", "det.able", "found", "recall", "rec.all", "p50 ms", "p99 ms")
    widths = (-9, 4, 8, 6, 7, 7, 8, 8)
    cells = (f"{name:<{-w}}" if w < 0 else f"{name:>{w}}" for name, w in zip(header, widths, strict=True))
    lines = [" ".join(cells)]
    for kind, row in [*result.score["by_kind"].items(), ("total", result.score["total"])]:
        delay = row["delay"] or {}
        lines.append(
            f"{kind:<9} {row['injected']:>4} {row['detectable']:>8} {row['detected_detectable']:>6}"
            f" {row['recall_detectable']!s:>7} {row['recall_all']!s:>7}"
            f" {delay.get('p50_ms', '-')!s:>8} {delay.get('p99_ms', '-')!s:>8}"
        )
    false = result.score["false_incidents"]
    by_condition: dict[str, int] = {}
    for item in result.false_all:
        by_condition[item.condition] = by_condition.get(item.condition, 0) + 1
    lines.append(f"false incidents by condition: {by_condition}")
    lines.append(
        f"false incidents: {false['count']} in {false['device_hours']} device-hours"
        f" = {false['per_1000_device_hours']} per 1,000; readings {result.readings:,};"
        f" detections by kind {result.detections}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--duration", type=int, default=120, help="seconds (one reading per device each)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--anomaly-rate", type=float, default=10.0, help="anomalies per device-hour")
    parser.add_argument("--kinds", default="all")
    parser.add_argument("--batch", type=int, default=1, help="seconds of readings per batch")
    parser.add_argument("--start", type=float, default=START, help="epoch of the first tick (daily cycle)")
    parser.add_argument(
        "--gap", type=float, default=GAP_S, help="episode gap (s); the alert store's resolve_after is 300"
    )
    parser.add_argument("--grace", type=float, default=GRACE_S, help="detection grace after an anomaly (s)")
    parser.add_argument("--json", action="store_true", help="print the scored section as JSON too")
    args = parser.parse_args()
    result = replay(
        devices=args.devices,
        duration=args.duration,
        seed=args.seed,
        anomaly_rate=args.anomaly_rate,
        kinds=args.kinds,
        batch_s=args.batch,
        start=args.start,
        gap_s=args.gap,
        grace_s=args.grace,
    )
    print(_table(result))
    if args.json:
        print(json.dumps({k: v for k, v in result.score.items()}, indent=1, default=str))
    else:
        for item in result.score["false_incidents"]["first"][:10]:
            print("false:", item)
        for item in result.score["missed"][:10]:
            print("missed:", item)


if __name__ == "__main__":
    main()
