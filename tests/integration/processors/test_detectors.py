"""The device detectors in `thermoflow process` on real Kafka: their state survives restarts and
rebalances, offline follows event time, and a stopped pipeline raises no false offline."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from tests.integration.processors.conftest import ProcessorRig
from thermoflow.events import AlertEvent, Reading, decode_alert, is_clear, is_watermark
from thermoflow.observe import committed
from thermoflow.processors.detectors import DeviceStates

RULES = """
version: 1
rules:
  - id: rack
    devices: "rack-*"
    above: {critical: 1000.0}
    offline_after: 30
    stuck: {tolerance: 0.1, for: 60}
default:
  id: default
  above: {critical: 1000.0}
"""
DEVICES = [f"rack-{i:02d}" for i in range(24)]
STUCK = {"rack-03", "rack-11", "rack-17"}


def fleet_second(t: float, *, start: float, devices: list[str] = DEVICES) -> list[Reading]:
    """One reading per device at ``start + t``: the STUCK ones constant, the others moving."""
    readings = []
    for index, device_id in enumerate(devices):
        value = 5.0 if device_id in STUCK else 20.0 + (index + t) % 7 * 0.5
        ts = start + t
        readings.append(Reading(device_id=device_id, value=value, ts=ts, received_at=ts + 0.01))
    return readings


async def send_seconds(
    rig: ProcessorRig, seconds: range, *, start: float, devices: list[str] = DEVICES
) -> None:
    await rig.send_readings([r for t in seconds for r in fleet_second(t, start=start, devices=devices)])


async def state_reaches(rig: ProcessorRig, *, last_ts: float, devices: set[str]) -> None:
    """Wait until the state topic holds every device of ``devices`` at ``last_ts``."""

    def done(found: list[ConsumerRecord]) -> bool:
        latest: dict[str, float] = {}
        for record in found:
            state = DeviceStates.from_bytes([record.value]).record(0)
            latest[record.key.decode().split("\x1f")[0]] = state.last_ts
        return all(latest.get(device) == last_ts for device in devices)

    await read_state(rig, done)


async def read_state(rig: ProcessorRig, until: Callable[[list[ConsumerRecord]], bool]) -> None:
    topic = f"{rig.group}-device-state"
    await rig.wait_for_topic(topic)  # reading it first would have the broker create it, wrongly
    await rig.records(topic, until=until, timeout=90)


async def stuck_until(rig: ProcessorRig, moment: float) -> list[AlertEvent]:
    """The stuck alerts, once every STUCK device has one for a reading at ``moment`` or later."""
    return await rig.alerts(
        until=lambda found: {a.device_id for a in found if a.reading_ts >= moment} >= STUCK,
        conditions=("stuck",),
    )


def stuck_alerts(alerts: list[AlertEvent]) -> dict[str, list[AlertEvent]]:
    found: dict[str, list[AlertEvent]] = defaultdict(list)
    for alert in alerts:
        found[alert.device_id].append(alert)
    return found


def assert_runs_kept(alerts: list[AlertEvent], *, start: float) -> None:
    """Every stuck alert measures its run from ``start``: no state was lost or started afresh."""
    by_device = stuck_alerts(alerts)
    assert set(by_device) == STUCK, "stuck alerts for exactly the stuck devices"
    for device_id, found in by_device.items():
        for alert in found:  # each batch's worst: its latest stuck reading, the run begun at ``start``
            assert alert.value == alert.reading_ts - start, (device_id, alert)
            assert alert.reading_ts >= start + 60 and alert.threshold == 60.0, (device_id, alert)


def _is_alert(headers: Any) -> bool:
    """An alert event, not a watermark or a clear (alerts carry other headers too: their traceparent)."""
    return not (is_watermark(headers) or is_clear(headers))


@pytest.mark.parametrize("how", ["SIGTERM", "kill -9"])
async def test_stuck_run_survives_a_worker_restart(rig: ProcessorRig, how: str) -> None:
    rig.rules_file.write_text(RULES)
    start = time.time() - 300
    worker = rig.start()
    await send_seconds(rig, range(0, 40), start=start)
    await state_reaches(rig, last_ts=start + 39, devices=set(DEVICES))
    if how == "SIGTERM":
        assert worker.stop() == 0
    else:  # nothing flushed or committed on the way out: the next worker replays from older offsets
        worker.proc.kill()
        worker.proc.wait()

    rig.start()
    await send_seconds(rig, range(40, 80), start=start)
    # Without the run carried over the restart, 40..79 s is 39 s stuck: no alert at all.
    assert_runs_kept(await stuck_until(rig, start + 79), start=start)


async def test_stuck_state_follows_partitions_from_one_worker_to_two_and_back(rig: ProcessorRig) -> None:
    rig.rules_file.write_text(RULES)
    start = time.time() - 300
    rig.start()
    await send_seconds(rig, range(0, 30), start=start)
    await state_reaches(rig, last_ts=start + 29, devices=set(DEVICES))

    second = rig.start()
    for _ in range(120):
        members = await rig.assignment()
        if len(members) == 2 and all(members):
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError(f"the second worker never got partitions: {members}")
    await send_seconds(rig, range(30, 55), start=start)
    await state_reaches(rig, last_ts=start + 54, devices=set(DEVICES))

    assert second.stop() == 0
    await send_seconds(rig, range(55, 80), start=start)
    assert_runs_kept(await stuck_until(rig, start + 79), start=start)


async def test_offline_on_event_time_then_cleared_when_the_device_is_back(rig: ProcessorRig) -> None:
    rig.rules_file.write_text(RULES)
    start = time.time() - 300
    silent = "rack-05"
    others = [d for d in DEVICES if d != silent]
    rig.start()
    await send_seconds(rig, range(0, 20), start=start)
    await state_reaches(rig, last_ts=start + 19, devices=set(DEVICES))
    await send_seconds(rig, range(20, 60), start=start, devices=others)
    alerts = await rig.alerts(until=lambda found: bool(found), conditions=("offline",))
    (alert,) = alerts
    assert alert.device_id == silent and alert.rule_id == "rack"
    assert alert.reading_ts == start + 19 + 0.01, "evidence: the last reading's received_at"
    assert alert.threshold == 30.0 and alert.value >= 30.0

    await send_seconds(rig, range(60, 65), start=start)
    found = await rig.clears(until=lambda found: any(c.condition == "offline" for c in found))
    (clear,) = [c for c in found if c.condition == "offline"]  # (readings 5 min old: ingest_silent too)
    assert (clear.device_id, clear.rule_id, clear.since) == (silent, "rack", alert.reading_ts)
    assert clear.cleared_at == start + 60 + 0.01, "the first reading after the silence"
    await asyncio.sleep(3)  # a few more offline checks: the device is back, nothing more fires
    later = [decode_alert(r.value) for r in await rig.everything(rig.alerts_topic) if _is_alert(r.headers)]
    assert [a for a in later if a.condition == "offline"] == alerts


async def test_no_false_offline_after_the_pipeline_stops_for_a_minute(rig: ProcessorRig) -> None:
    """Devices keep publishing (received_at is real time) while the only worker is stopped for 60 s."""
    rig.rules_file.write_text(RULES)
    fleet = [f"rack-{i:03d}" for i in range(500)]

    async def live(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            now = time.time()
            await rig.send_readings(
                [
                    Reading(device_id=d, value=20.0 + i % 3, ts=now, received_at=now)
                    for i, d in enumerate(fleet)
                ]
            )
            await asyncio.sleep(1.0)

    worker = rig.start()
    await live(10)
    assert worker.stop() == 0
    await live(60)
    rig.start(THERMOFLOW_MAX_BATCH="50")  # the backlog in hundreds of batches, timer ticks between them
    await live(10)
    last = time.time() - 2
    await state_reaches_after(rig, last, fleet)
    records = await rig.everything(rig.alerts_topic)
    found = [decode_alert(r.value) for r in records if _is_alert(r.headers)]
    assert not [a for a in found if a.condition in ("offline", "ingest_silent")], found


async def state_reaches_after(rig: ProcessorRig, moment: float, devices: list[str]) -> None:
    """Wait until every device's stored state is past ``moment`` (the restarted worker caught up)."""

    def done(found: list[ConsumerRecord]) -> bool:
        latest: dict[str, float] = {}
        for record in found:
            latest[record.key.decode().split("\x1f")[0]] = (
                DeviceStates.from_bytes([record.value]).record(0).last_seen
            )
        return all(latest.get(device, 0.0) >= moment for device in devices)

    await read_state(rig, done)


async def test_offsets_wait_for_the_state_and_a_kill_replays_the_same_alerts(rig: ProcessorRig) -> None:
    """The state is written every ``state_interval``, not per batch: until it is, the readings it
    covers are not committed, so a worker killed before the write is replayed from the state
    stored before them, and the replay sends the same alerts (same ids, the stuck run kept)."""
    rig.rules_file.write_text(RULES)
    start = time.time() - 300
    worker = rig.start(THERMOFLOW_STATE_INTERVAL="60")
    await send_seconds(rig, range(0, 70), start=start)
    first = await stuck_until(rig, start + 69)
    assert_runs_kept(first, start=start)
    assert await committed(rig.settings, rig.group, rig.readings_topic) == 0, "committed before the state"
    state_topic = f"{rig.group}-device-state"
    await rig.wait_for_topic(state_topic)
    assert await rig.everything(state_topic) == [], "state written before state_interval"
    worker.proc.kill()
    worker.proc.wait()

    rig.start()  # the default state_interval, 1 s
    sent = len(DEVICES) * 70
    await state_reaches(rig, last_ts=start + 69, devices=set(DEVICES))
    for _ in range(120):
        if await committed(rig.settings, rig.group, rig.readings_topic) == sent:
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError("the replayed readings were never committed")
    final = start + 69  # each run's last batch holds it, its worst stuck reading: alerted both times

    def at_final(found: list[AlertEvent]) -> dict[str, list[str]]:
        ids: dict[str, list[str]] = defaultdict(list)
        for alert in found:
            if alert.reading_ts == final:
                ids[alert.device_id].append(alert.alert_id)
        return ids

    alerts = await rig.alerts(
        until=lambda found: (
            len(at_final(found)) == len(STUCK) and all(len(ids) >= 2 for ids in at_final(found).values())
        ),
        conditions=("stuck",),
    )
    assert_runs_kept(alerts, start=start)
    for device_id, ids in at_final(alerts).items():  # the first run's alert, then the replay's
        assert len(set(ids)) == 1, f"{device_id}: the replay sends the same alert id, got {ids}"
