"""The bridge's window against real Mosquitto and Kafka: never more held than the window, whatever
the broker sends, kill -9 included, and nothing lost; a bridge whose acks stop moving while Kafka
answers is found stalled.

Mosquitto 2.0 keeps to an MQTT 5 receive maximum only until the first PUBACK, then sends all it
has queued: the window is the bridge's own, and these tests hold it to that.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Endpoints
from tests.integration.ingest.helpers import (
    Component,
    KafkaReader,
    bridge_settings,
    mqtt_prefix,
    publish,
    start_thread,
    wait_for,
)
from tests.integration.ingest.test_bridge import valid_message
from thermoflow.events import decode_reading
from thermoflow.ingest.acks import Held
from thermoflow.ingest.bridge import Bridge
from thermoflow.metrics import Metrics
from thermoflow.settings import ThermoflowSettings
from thermoflow.watchdog import Watchdog


async def test_the_bridge_never_holds_more_than_its_window_though_the_broker_sends_more(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    window = 50
    config = bridge_settings(settings, new_topic, mqtt_receive_maximum=window)
    assert config.bridge_max_pending > window  # the receive maximum is the bound here
    prefix = mqtt_prefix(config)
    messages = [valid_message(i, prefix) for i in range(5000)]
    metrics = Metrics("bridge")
    stop = asyncio.Event()
    bridge = asyncio.create_task(Bridge(config, metrics=metrics).run(stop))
    try:
        await wait_for(lambda: metrics.counter("mqtt_connects") >= 1, timeout=30, what="connected")
        await asyncio.sleep(0.5)  # subscribed
        await asyncio.to_thread(publish, endpoints, [(t, p) for t, p, _, _ in messages])
        await wait_for(lambda: metrics.counter("acked") >= len(messages), timeout=90, what="all acked")
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    gauges = metrics.snapshot()["gauges"]
    assert 0 < gauges["in_flight_peak"] <= window, gauges
    assert metrics.counter("received") == metrics.counter("acked") == len(messages)
    assert gauges["unacked"] == 0


def logged_peaks(log_dir: Path) -> list[int]:
    """``in_flight_peak`` of every metrics line the bridge runs wrote, killed ones included."""
    peaks = []
    for path in sorted(log_dir.glob("bridge-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if '"bridge_metrics"' in line or '"bridge_stopped"' in line:
                peaks.append(json.loads(line)["gauges"]["in_flight_peak"])
    return peaks


async def test_a_kill_9_under_load_loses_nothing_and_no_run_holds_more_than_its_window(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Killed while the stream flows, then while the restarted bridge catches up on a backlog.

    What a kill -9 duplicates is what the bridge held in Kafka but unacked (at most its window,
    asserted here from each run's own metrics), plus PUBACKs the broker had not read yet:
    Mosquitto 2.0.11 drops those when the dead bridge's connection resets, and after a burst of
    acks that can be several windows more (measured: 0-600 duplicates per run of two kills most
    of the time with a window of 300, up to about 1,200 now and then), so the duplicates alone
    are not asserted against the window.
    """
    window = 300
    config = bridge_settings(
        settings, new_topic, mqtt_receive_maximum=window, bridge_max_pending=window, metrics_interval=0.5
    )
    prefix = mqtt_prefix(config)
    messages = [valid_message(i, prefix) for i in range(12_000)]
    wanted = {key for _, _, key, _ in messages}
    bridge = Component("bridge", config, tmp_path)
    bridge.env["PYTHONUNBUFFERED"] = "1"  # a killed run's log lines are on disk, not in its buffer
    bridge.start()
    try:
        async with KafkaReader(endpoints.kafka_bootstrap, config.readings_topic) as kafka:
            readings = kafka.records[config.readings_topic]
            await bridge.wait_log("mqtt_subscribed")
            published = [0]
            publisher, errors = start_thread(
                lambda: publish(
                    endpoints, [(t, p) for t, p, _, _ in messages], pause_every=50, pause=0.05,
                    published=published,
                )
            )  # fmt: skip
            for kill in range(2):
                await kafka.until_count(config.readings_topic, len(readings) + 2000, timeout=90)
                bridge.kill()
                assert published[0] < len(messages) or kill > 0, "the first kill must come mid-stream"
                await asyncio.sleep(3.0)  # a backlog of several windows gathers in the broker
                bridge.start()
            await asyncio.to_thread(publisher.join, 120)
            assert not errors, errors
            await kafka.until(
                lambda: (
                    {(decode_reading(r.value).device_id, decode_reading(r.value).ts) for r in readings}
                    >= wanted
                ),
                timeout=120,
                what="every reading after the restarts",
            )
            assert bridge.terminate() == 0, bridge.log()
    finally:
        bridge.close()
    seen = {(decode_reading(r.value).device_id, decode_reading(r.value).ts) for r in readings}
    assert seen == wanted  # nothing lost
    peaks = logged_peaks(tmp_path)
    assert peaks and max(peaks) <= window, peaks


async def test_acks_that_cannot_move_while_kafka_answers_are_a_stall(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    config = bridge_settings(settings, new_topic)
    prefix = mqtt_prefix(config)
    stalled = threading.Event()
    watchdog = Watchdog(component="bridge", stall_after=2.0, on_stall=stalled.set)
    metrics = Metrics("bridge")
    bridge = Bridge(config, metrics=metrics, watchdog=watchdog)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        await wait_for(lambda: metrics.counter("mqtt_connects") >= 1, timeout=30, what="connected")
        await asyncio.sleep(0.5)  # subscribed
        # A message whose record never completes (as a bug would leave it) heads the line.
        bridge._pending.append(Held(mid=0, qos=0, received=time.monotonic(), records=1))
        messages = [valid_message(i, prefix) for i in range(20)]
        async with KafkaReader(endpoints.kafka_bootstrap, config.readings_topic) as kafka:
            await asyncio.to_thread(publish, endpoints, [(t, p) for t, p, _, _ in messages])
            await kafka.until_count(config.readings_topic, len(messages), timeout=30)  # Kafka works
        await asyncio.to_thread(stalled.wait, 30)
        assert stalled.is_set(), "held messages without an ack for longer than stall_after: a stall"
        assert metrics.counter("acked") == 0  # everything waits behind the one that never completes
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
