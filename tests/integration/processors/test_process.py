"""`thermoflow process` on real Kafka: alerts, dead letters, rules reload, several workers."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from tests.integration.processors.conftest import ProcessorRig, reading
from thermoflow.events import AlertEvent, Reading, alert_id, parse_dead_letter_headers
from thermoflow.processors import reference
from thermoflow.rules import load_rules


def expected_alerts(readings: list[Reading], rules_file: Path) -> dict[str, reference.ScalarBreach]:
    """The scalar reference's alerts, when each (device, rule) breaches in one reading only."""
    rules = load_rules(rules_file)
    found = reference.evaluate(
        [reference.ScalarReading(r.device_id, r.metric, r.value, r.ts) for r in readings], rules
    )
    return {
        alert_id(device_id=b.device_id, rule_id=b.rule_id, severity=b.severity, reading_ts=b.ts): b
        for b in found
    }


def as_breach(alert: AlertEvent) -> reference.ScalarBreach:
    return reference.ScalarBreach(
        device_id=alert.device_id,
        metric=alert.metric,
        rule_id=alert.rule_id,
        severity=alert.severity,
        condition=alert.condition,
        threshold=alert.threshold,
        value=alert.value,
        ts=alert.reading_ts,
    )


def fleet(count: int, *, seed: int, start_ts: float, breach_every: int = 5) -> list[Reading]:
    """Normal readings for every profile, and one breaching reading for every ``breach_every``-th device.

    Each device breaches in one reading at most, so the expected alerts do not depend on how
    the worker happens to cut its batches.
    """
    rng = random.Random(seed)
    normal = {"freezer": (-22, -16), "coldroom": (2, 6), "rack": (20, 30), "greenhouse": (15, 32)}
    anomalies = {
        "freezer": [-9.5, -11.0, -40.0],
        "coldroom": [9.0, 12.0, -1.0, -3.0],
        "rack": [36.0, 41.0, 12.0, 35.0],  # 35.0 is exactly the threshold: no alert
        "greenhouse": [38.0, 2.0],
    }
    readings: list[Reading] = []
    ts = start_ts
    for device in range(count):
        profile = list(normal)[device % len(normal)]
        device_id = f"{profile}-{seed:02d}{device:04d}"
        breach_at = rng.randrange(8) if device % breach_every == 0 else None
        for step in range(8):
            ts += 0.001
            low, high = normal[profile]
            value = rng.choice(anomalies[profile]) if step == breach_at else rng.uniform(low, high)
            readings.append(reading(device_id, value, ts))
    readings.append(reading("unknown-0001", 46.0, ts + 1))  # the default rule
    readings.append(reading("rack-humid", 99.0, ts + 2, metric="humidity"))  # no rule for humidity
    rng.shuffle(readings)
    return readings


async def test_known_breaches_give_exactly_the_expected_alerts(rig: ProcessorRig) -> None:
    readings = fleet(120, seed=1, start_ts=1_764_000_000.0)
    expected = expected_alerts(readings, rig.rules_file)
    assert 20 < len(expected) < 40  # the fleet has breaches, at and across thresholds
    await rig.send_readings(readings)
    started = time.time()
    worker = rig.start()

    alerts = await rig.alerts(until=lambda found: len({a.alert_id for a in found}) >= len(expected))
    assert {a.alert_id: as_breach(a) for a in alerts} == expected
    assert len(alerts) == len(expected)  # one worker, no restart: no replays
    assert all(started <= a.detected_at <= time.time() for a in alerts)
    assert worker.stop() == 0

    # The offsets were committed on the way out: a new worker of the group starts after them.
    more = [reading("rack-late", 44.0, 1_764_100_000.0)]
    await rig.send_readings(more)
    second = rig.start()
    late = expected_alerts(more, rig.rules_file)
    alerts = await rig.alerts(until=lambda found: any(a.alert_id in late for a in found))
    assert sorted(a.alert_id for a in alerts) == sorted([*expected, *late])
    assert second.stop() == 0


async def test_undecodable_records_go_to_dead_letters_and_the_stream_goes_on(rig: ProcessorRig) -> None:
    worker = rig.start()
    before = await rig.send_readings([reading("rack-0001", 41.0, 1000.0)])
    bad_values = [
        b"not json",
        b'{"v": 1, "device_id": "rack-0002", "value": "hot", "ts": 1.0, "received_at": 1.0}',
        b'{"v": 1, "device_id": "rack-0003", "ts": 1.0, "received_at": 1.0}',
        b'{"v": 2, "device_id": "rack-0004", "value": 50.0, "ts": 1.0, "received_at": 1.0}',
        b"",
    ]
    bad = [await rig.send(value, key=f"bad-{i}".encode()) for i, value in enumerate(bad_values)]
    after = await rig.send_readings([reading("rack-0005", 42.0, 1001.0)])

    letters = await rig.records(rig.deadletter_topic, until=lambda found: len(found) >= len(bad))
    assert len(letters) == len(bad)
    by_key = {letter.key: letter for letter in letters}
    for i, (value, meta) in enumerate(zip(bad_values, bad, strict=True)):
        letter = by_key[f"bad-{i}".encode()]
        assert letter.value == value  # the original bytes, unchanged
        reason = parse_dead_letter_headers(letter.headers)
        assert reason.stage == "processors"
        assert reason.source == f"{rig.readings_topic}/{meta.partition}/{meta.offset}"
        assert reason.error
    assert "value" in parse_dead_letter_headers(by_key[b"bad-1"].headers).error  # names the field
    assert "dead_letter" in worker.log()

    alerts = await rig.alerts(until=lambda found: {a.device_id for a in found} >= {"rack-0001", "rack-0005"})
    assert {(a.device_id, a.severity) for a in alerts} == {
        ("rack-0001", "critical"),
        ("rack-0005", "critical"),
    }
    assert before and after
    assert worker.stop() == 0


RULES_V1 = """
version: 1
rules:
  - {id: rack, devices: "rack-*", above: {warning: 35.0, critical: 40.0}}
"""
RULES_V2 = """
version: 1
rules:
  - {id: rack-strict, devices: "rack-*", above: {warning: 30.0, critical: 38.0}}
"""
RULES_BROKEN = """
version: 1
rules:
  - {id: rack-broken, devices: "rack-*", above: {warning: 30.0, critical: 10.0}}
"""


async def test_rules_file_changes_take_effect_and_a_broken_file_keeps_the_old_rules(
    rig: ProcessorRig,
) -> None:
    rig.rules_file.write_text(RULES_V1)
    worker = rig.start()

    async def alert_for(device_id: str) -> tuple[str, str, float]:
        await rig.send_readings([reading(device_id, 38.5, 1.0)])
        alerts = await rig.alerts(until=lambda found: any(a.device_id == device_id for a in found))
        (alert,) = [a for a in alerts if a.device_id == device_id]
        return (alert.rule_id, alert.severity, alert.threshold)

    assert await alert_for("rack-a") == ("rack", "warning", 35.0)

    rig.rules_file.write_text(RULES_V2)
    await _wait_for_log(worker.log, "rules_reloaded")
    assert await alert_for("rack-b") == ("rack-strict", "critical", 38.0)

    rig.rules_file.write_text(RULES_BROKEN)
    await _wait_for_log(worker.log, "rules_rejected")
    log = worker.log()
    assert "rack-broken" in log and "above.critical" in log  # the logged reason names the rule and the field
    assert await alert_for("rack-c") == ("rack-strict", "critical", 38.0)  # the old rules stay in force
    assert worker.stop() == 0


async def _wait_for_log(log: object, event: str, timeout: float = 30.0) -> None:
    assert callable(log)
    deadline = time.monotonic() + timeout
    while event not in log():
        assert time.monotonic() < deadline, f"no {event} in the worker's log"
        await asyncio.sleep(0.1)


async def _wait_for_members(rig: ProcessorRig, count: int, timeout: float = 60) -> list[list[int]]:
    deadline = time.monotonic() + timeout
    while not ((shares := await rig.assignment()) and len(shares) == count and all(shares)):
        assert time.monotonic() < deadline, shares
        await asyncio.sleep(0.5)
    return shares


async def test_several_workers_share_the_partitions_and_a_rebalance_loses_no_alert(rig: ProcessorRig) -> None:
    group = rig.start("--workers", "2")
    waves = [
        fleet(80, seed=seed, start_ts=1_764_000_000.0 + seed * 10_000, breach_every=3)
        for seed in (11, 12, 13)
    ]
    expected: dict[str, reference.ScalarBreach] = {}
    for wave in waves:
        expected.update(expected_alerts(wave, rig.rules_file))

    await rig.send_readings(waves[0])
    first = expected_alerts(waves[0], rig.rules_file)
    await rig.alerts(until=lambda found: {a.alert_id for a in found} >= set(first))
    shares = await _wait_for_members(rig, 2)  # both workers hold partitions
    assert sorted(p for share in shares for p in share) == list(range(6))

    joiner = rig.start()  # a third worker joins the group: the partitions are reassigned
    await _wait_for_members(rig, 3)
    await rig.send_readings(waves[1])
    await _wait_for_log(joiner.log, "first_batch_processed", timeout=60)
    assert joiner.stop() == 0  # and leaves again: another rebalance
    await rig.send_readings(waves[2])

    alerts = await rig.alerts(until=lambda found: {a.alert_id for a in found} >= set(expected), timeout=90)
    # Nothing lost, nothing made up; a replay (if any) has the same alert_id and content.
    assert {a.alert_id for a in alerts} == set(expected)
    for alert in alerts:
        assert as_breach(alert) == expected[alert.alert_id]
    assert group.stop() == 0
    assert group.log().count('"worker_starting"') == 2


FLAKY_MODULE = """
import os

import numpy as np

from thermoflow.processors.runtime import Emit, registry, setting
from thermoflow.events import Reading

SINK = os.environ["TEST_FLAKY_SINK"]


@registry.function(name="flaky", source=setting("readings_topic"), sink=SINK)
def flaky(batch):
    if np.any(batch.columns.values == 666.0):
        raise RuntimeError("poison reading")
    found = np.flatnonzero(batch.columns.values == 777.0)
    echo = [Reading(device_id=batch.device_id(i), value=1.0, ts=1.0, received_at=1.0) for i in found]
    return [Emit(key=event.device_id, event=event) for event in echo]
"""


async def test_a_function_that_keeps_failing_dead_letters_its_batch_and_the_stream_goes_on(
    rig: ProcessorRig, new_topic: object, tmp_path: Path
) -> None:
    assert callable(new_topic)
    sink = new_topic("flaky-sink")
    (tmp_path / "flaky_functions.py").write_text(FLAKY_MODULE)
    worker = rig.start(
        "--functions",
        "flaky_functions",
        PYTHONPATH=str(tmp_path),
        TEST_FLAKY_SINK=sink,
        THERMOFLOW_FUNCTION_BACKOFF="0.05",
        THERMOFLOW_FUNCTION_RETRIES="3",
    )
    (poison,) = await rig.send_readings([reading("rack-poison", 666.0, 1.0)])
    letters = await rig.records(rig.deadletter_topic, until=lambda found: len(found) >= 1)
    reason = parse_dead_letter_headers(letters[0].headers)
    assert letters[0].key == b"rack-poison"
    assert reason.source == f"{rig.readings_topic}/{poison.partition}/{poison.offset}"
    assert "flaky" in reason.error and "3 time(s)" in reason.error and "poison reading" in reason.error

    # The stream goes on: the next batch reaches the function, and the threshold check saw both.
    await rig.send_readings([reading("rack-fine", 777.0, 2.0)])
    emitted = await rig.records(sink, until=lambda found: len(found) >= 1)
    assert [record.key for record in emitted] == [b"rack-fine"]
    alerts = await rig.alerts(
        until=lambda found: {a.device_id for a in found} >= {"rack-poison", "rack-fine"}
    )
    assert {a.device_id for a in alerts} == {"rack-poison", "rack-fine"}
    assert len(letters) == 1
    assert worker.stop() == 0


async def test_a_worker_reads_its_partitions_state_when_they_are_assigned_before_any_reading(
    rig: ProcessorRig,
) -> None:
    # Read at the first batch instead, it took that batch about half a second longer (the state
    # topic's reader starting), and every reading of the batch waited for it.
    worker = rig.start()
    await _wait_for_log(worker.log, "state_loaded", timeout=90)
    assert "first_batch_processed" not in worker.log()  # no reading came: the assignment read it
    assert worker.stop() == 0
