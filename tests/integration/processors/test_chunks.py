"""The chunk adapter (processors.batching) on real Kafka: commits, restarts, rebalances, stop signals."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.processors.conftest import ProcessorRig, reading
from tests.integration.processors.test_process import (
    _wait_for_log,
    _wait_for_members,
    as_breach,
    expected_alerts,
    fleet,
)
from thermoflow import kafka
from thermoflow.component import EXIT_STOP_TIMEOUT
from thermoflow.events import Watermark, decode_watermark, is_watermark
from thermoflow.processors import reference


async def committed(rig: ProcessorRig) -> dict[int, int]:
    """The group's committed offset per partition of the readings topic."""
    admin = AIOKafkaAdminClient(**rig.settings.kafka_options())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(rig.group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == rig.readings_topic}


async def ends(rig: ProcessorRig) -> dict[int, int]:
    consumer = kafka.consumer(rig.settings, rig.readings_topic, group_id=None)
    await consumer.start()
    try:
        return {
            tp.partition: end for tp, end in (await consumer.end_offsets(list(consumer.assignment()))).items()
        }
    finally:
        await consumer.stop()


async def wait_committed(rig: ProcessorRig, want: dict[int, int], *, timeout: float) -> dict[int, int]:
    """Wait until every partition of ``want`` has committed at least its offset; the offsets at the end."""
    deadline = time.monotonic() + timeout
    while True:
        done = await committed(rig)
        if all(done.get(p, 0) >= offset for p, offset in want.items()):
            return done
        if time.monotonic() > deadline:
            logs = "\n".join(w.log()[-3000:] for w in rig.workers)
            raise AssertionError(f"committed {done}, want {want} after {timeout}s\n{logs}")
        await asyncio.sleep(0.2)


async def test_a_partition_whose_first_chunk_is_the_lone_record_at_offset_0_keeps_committing(
    rig: ProcessorRig, new_topic: object
) -> None:
    """faust's drain loop takes read offset 0 for none: when faust committed the chunks, the
    chunk after it got no gap and the partition never committed again."""
    assert callable(new_topic)
    rig.readings_topic = new_topic("readings", partitions=1)
    await rig.send_readings([reading("rack-0", 20.0, 1.0)])  # offset 0, alone
    worker = rig.start()
    await wait_committed(rig, {0: 1}, timeout=90)
    await rig.send_readings([reading(f"rack-{i}", 20.0, 2.0 + i) for i in range(1000)])  # 1..1000
    await wait_committed(rig, {0: 1001}, timeout=30)
    assert worker.stop() == 0

    await rig.send_readings([reading(f"rack-{i}", 20.0, 5000.0 + i) for i in range(1000)])
    again = rig.start()  # resumes at the committed offset 1001, and commits on
    await wait_committed(rig, {0: 2001}, timeout=90)
    assert again.stop() == 0


async def test_commits_keep_up_with_a_live_stream_of_small_chunks(rig: ProcessorRig) -> None:
    """The committed offsets follow the processed chunks while readings keep coming: with faust's
    own commits (a round moved a partition on by one chunk) they fell further and further behind."""
    worker = rig.start()
    await rig.send_readings([reading("rack-warm", 20.0, 1.0)])
    await _wait_for_log(worker.log, "first_batch_processed", timeout=90)
    for tick in range(60):  # ~6 s of small sends: tens of chunks per partition
        await rig.send_readings([reading(f"rack-{tick}-{i}", 20.0, 10.0 + tick) for i in range(60)])
        await asyncio.sleep(0.1)
    # Commits every second (commit_interval) would need a minute and more for these chunks.
    await wait_committed(rig, await ends(rig), timeout=15)
    assert worker.stop() == 0


async def test_a_restart_resumes_at_the_committed_offsets_and_loses_nothing(rig: ProcessorRig) -> None:
    waves = [
        fleet(150, seed=seed, start_ts=1_765_000_000.0 + seed * 10_000, breach_every=3) for seed in (21, 22)
    ]
    expected = {k: v for wave in waves for k, v in expected_alerts(wave, rig.rules_file).items()}
    first_expected = expected_alerts(waves[0], rig.rules_file)
    worker = rig.start()
    await rig.send_readings(waves[0])
    await rig.alerts(until=lambda found: {a.alert_id for a in found} >= set(first_expected))
    await wait_committed(rig, await ends(rig), timeout=30)
    assert worker.stop() == 0  # SIGTERM: stops, commits on the way out
    at_stop = await committed(rig)
    assert sum(at_stop.values()) == len(waves[0])

    await rig.send_readings(waves[1])
    again = rig.start()
    alerts = await rig.alerts(until=lambda found: {a.alert_id for a in found} >= set(expected), timeout=90)
    assert {a.alert_id for a in alerts} == set(expected)  # nothing lost
    for alert in alerts:
        assert as_breach(alert) == expected[alert.alert_id]
    # It resumed where the first worker had committed: the first wave's alerts were not made again.
    assert len(alerts) == len(expected)
    assert again.stop() == 0


async def test_a_rebalance_from_one_worker_to_two_and_back_loses_no_alert(rig: ProcessorRig) -> None:
    waves = [
        fleet(100, seed=seed, start_ts=1_766_000_000.0 + seed * 10_000, breach_every=3)
        for seed in (31, 32, 33)
    ]
    expected: dict[str, reference.ScalarBreach] = {}
    for wave in waves:
        expected.update(expected_alerts(wave, rig.rules_file))

    first = rig.start()
    await rig.send_readings(waves[0])
    await rig.alerts(
        until=lambda found: {a.alert_id for a in found} >= set(expected_alerts(waves[0], rig.rules_file))
    )
    second = rig.start()  # one worker to two: the partitions are shared
    shares = await _wait_for_members(rig, 2)
    assert sorted(p for share in shares for p in share) == list(range(6))
    await rig.send_readings(waves[1])
    await _wait_for_log(second.log, "first_batch_processed", timeout=60)
    assert second.stop() == 0  # and back to one
    await _wait_for_members(rig, 1)
    await rig.send_readings(waves[2])

    alerts = await rig.alerts(until=lambda found: {a.alert_id for a in found} >= set(expected), timeout=90)
    # Nothing lost, nothing made up; a replayed alert has the same alert_id and content.
    assert {a.alert_id for a in alerts} == set(expected)
    for alert in alerts:
        assert as_breach(alert) == expected[alert.alert_id]
    await wait_committed(rig, await ends(rig), timeout=30)
    assert first.stop() == 0


@pytest.mark.parametrize("stop_signal", [signal.SIGHUP, signal.SIGINT])
async def test_a_worker_stops_cleanly_on_sighup_and_sigint_as_every_component(
    rig: ProcessorRig, stop_signal: signal.Signals
) -> None:
    worker = rig.start(THERMOFLOW_SHUTDOWN_GRACE="15")
    await rig.send_readings([reading("rack-0001", 41.0, 1000.0)])
    await rig.alerts(until=lambda found: len(found) >= 1)
    worker.proc.send_signal(stop_signal)
    assert worker.proc.wait(timeout=30) == 0
    assert '"stopping"' in worker.log() and stop_signal.name in worker.log()
    assert await committed(rig) == {p: o for p, o in (await ends(rig)).items() if o}


STUCK_MODULE = """
import time

import numpy as np

from thermoflow.processors.runtime import registry, setting


@registry.function(name="stuck", source=setting("readings_topic"), sink=setting("alerts_topic"))
def stuck(batch):
    if np.any(batch.columns.values == 666.0):
        time.sleep(3600)  # blocks the event loop: the worker cannot stop by itself
    return []
"""


async def test_a_worker_stuck_on_stop_exits_with_code_4_after_the_grace(
    rig: ProcessorRig, tmp_path: object
) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    (tmp_path / "stuck_functions.py").write_text(STUCK_MODULE)
    worker = rig.start(
        "--functions", "stuck_functions", PYTHONPATH=str(tmp_path), THERMOFLOW_SHUTDOWN_GRACE="2"
    )
    await rig.send_readings([reading("rack-0001", 41.0, 1000.0)])
    await rig.alerts(until=lambda found: len(found) >= 1)
    await rig.send_readings([reading("rack-stuck", 666.0, 1001.0)])
    await asyncio.sleep(2)  # the batch has reached the stuck function
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=30) == EXIT_STOP_TIMEOUT
    assert "shutdown_stuck" in worker.log()


async def test_every_alerts_partition_gets_the_watermark_of_every_readings_partition_processed(
    rig: ProcessorRig,
) -> None:
    """The watermarks go out as one producer batch per alerts partition: each still carries the
    watermark header, no key, and the event time of the readings its partition processed."""
    worker = rig.start()
    await rig.send_readings([reading(f"rack-{i}", 20.0, 1_000.0 + i) for i in range(60)])
    processed = {partition for partition, end in (await ends(rig)).items() if end}
    alerts_partitions = (await kafka.partition_counts(rig.settings, [rig.alerts_topic]))[rig.alerts_topic]
    want = {(sink, source) for sink in range(alerts_partitions) for source in processed}

    def marks(found: list[Any]) -> dict[tuple[int, int], Watermark]:
        return {
            (record.partition, mark.partition): mark
            for record in found
            if is_watermark(record.headers)
            for mark in [decode_watermark(record.value)]
        }

    found = await rig.records(rig.alerts_topic, until=lambda found: marks(found).keys() >= want, timeout=60)
    assert all(record.key is None for record in found if is_watermark(record.headers))
    for mark in marks(found).values():
        assert mark.topic == rig.readings_topic and 1_000.0 <= mark.event_time <= 1_059.0 and not mark.idle
    assert worker.stop() == 0
