"""The bridge while Kafka is down: it acks nothing, holds no more than the in-flight window, is not
taken for stalled, and delivers everything by itself once Kafka is back; stopped meanwhile, it
exits within its grace, acks nothing that is not in Kafka and says how much it left unacked.
Kafka here is a private node, stopped mid-stream."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Endpoints, unique_name
from tests.integration.ingest.helpers import Component, KafkaReader, ingest_settings, publish, wait_for
from tests.integration.ingest.test_bridge import valid_message
from thermoflow import kafka
from thermoflow.events import decode_reading
from thermoflow.ingest.bridge import Bridge
from thermoflow.ingest.settings import IngestSettings
from thermoflow.metrics import Metrics
from thermoflow.settings import ThermoflowSettings
from thermoflow.stack.services import Kafka
from thermoflow.watchdog import Watchdog

WINDOW = 200  # the bridge's MQTT 5 receive maximum: what the broker lets it hold unacked
GRACE = 30.0  # what `thermoflow run` gives a component to stop before SIGKILL


def outage_settings(settings: ThermoflowSettings, private_kafka: Kafka) -> tuple[IngestSettings, str]:
    """A bridge on MQTT topics of its own into the private Kafka; and its MQTT topic prefix."""
    base = settings.model_copy(update={"kafka_bootstrap": private_kafka.address})
    prefix = unique_name("sensors")
    config = ingest_settings(
        base,
        readings_topic=unique_name("readings"),
        deadletter_topic=unique_name("deadletter"),
        mqtt_topics=f"{prefix}/+/temperature",
        topic_template=f"{prefix}/{{device_id}}/{{metric}}",
        mqtt_client_id=unique_name("bridge"),
        mqtt_receive_maximum=WINDOW,
        metrics_interval=1.0,
    )
    return config, prefix


async def test_kafka_down_holds_the_acks_bounds_memory_and_recovers_by_itself(
    endpoints: Endpoints, settings: ThermoflowSettings, private_kafka: Kafka
) -> None:
    config, prefix = outage_settings(settings, private_kafka)
    await kafka.ensure_topics(config, {config.readings_topic: 6, config.deadletter_topic: 1})
    messages = [valid_message(i, prefix) for i in range(3000)]
    stream = [(topic, payload) for topic, payload, _, _ in messages]
    metrics = Metrics("bridge")
    counter: Callable[[str], int] = metrics.counter
    stalled = threading.Event()
    watchdog = Watchdog(component="bridge", stall_after=4.0, on_stall=stalled.set)
    stop = asyncio.Event()
    bridge = asyncio.create_task(Bridge(config, metrics=metrics, watchdog=watchdog).run(stop))
    try:
        await wait_for(lambda: counter("mqtt_connects") >= 1, timeout=30, what="connected")
        await asyncio.sleep(0.5)  # subscribed
        await asyncio.to_thread(publish, endpoints, stream[:1000])
        await wait_for(lambda: counter("acked") == 1000, timeout=60, what="the first 1,000 acked")

        await asyncio.to_thread(private_kafka.down)
        await asyncio.to_thread(publish, endpoints, stream[1000:])  # the broker takes them meanwhile
        await asyncio.sleep(5)
        assert counter("acked") == 1000  # nothing acked while Kafka is away
        held = metrics.snapshot()["gauges"]["in_flight"]
        assert 0 < held <= WINDOW, held  # the broker keeps the rest in the session

        await asyncio.to_thread(private_kafka.up)
        await wait_for(
            lambda: counter("acked") >= 3000, timeout=120, what="every message acked after Kafka came back"
        )
        assert not stalled.is_set(), "an outage is retried, not a stall"
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    async with KafkaReader(private_kafka.address, config.readings_topic) as reader:
        await reader.until_count(config.readings_topic, 3000, timeout=60)
        landed = {
            (decode_reading(r.value).device_id, decode_reading(r.value).ts)
            for r in reader.records[config.readings_topic]
        }
    assert landed == {key for _, _, key, _ in messages}
    assert counter("acked") == counter("received") == 3000  # each message once: no reconnect, no redelivery


def drained(log: str) -> dict[str, int]:
    """The fields of the ``bridge_drained`` line in a bridge's JSON log."""
    [line] = [json.loads(line) for line in log.splitlines() if '"bridge_drained"' in line]
    return {key: value for key, value in line.items() if isinstance(value, int)}


async def test_sigterm_while_kafka_is_down_exits_within_the_grace_and_loses_nothing(
    endpoints: Endpoints, settings: ThermoflowSettings, private_kafka: Kafka, tmp_path: Path
) -> None:
    config, prefix = outage_settings(settings, private_kafka)
    await kafka.ensure_topics(config, {config.readings_topic: 6, config.deadletter_topic: 1})
    messages = [valid_message(i, prefix) for i in range(2000)]
    stream = [(topic, payload) for topic, payload, _, _ in messages]
    bridge = Component("bridge", config, tmp_path)
    bridge.start()
    try:
        await bridge.wait_log("mqtt_subscribed")
        await asyncio.to_thread(publish, endpoints, stream[:1000])
        async with KafkaReader(private_kafka.address, config.readings_topic) as reader:
            await reader.until_count(config.readings_topic, 1000, timeout=60)
        await asyncio.sleep(1.0)  # their acks are out

        await asyncio.to_thread(private_kafka.down)
        await asyncio.to_thread(publish, endpoints, stream[1000:])  # the broker takes them
        await asyncio.sleep(3.0)  # the bridge holds a window of them, waiting for Kafka
        exit_code = await asyncio.to_thread(bridge.terminate, GRACE)  # raises if it hangs past the grace
        assert exit_code == 0, bridge.log()
        # It says how many it left unacked: the window it held (the first 1,000 were acked).
        stats = drained((tmp_path / "bridge-1.log").read_text())
        assert stats["unacked"] == WINDOW and stats["acked"] == 1000, stats

        await asyncio.to_thread(private_kafka.up)
        bridge.start()  # the same session: the broker sends what was never acked
        async with KafkaReader(private_kafka.address, config.readings_topic) as reader:
            records = reader.records[config.readings_topic]

            def landed() -> set[tuple[str, float]]:
                return {(decode_reading(r.value).device_id, decode_reading(r.value).ts) for r in records}

            wanted = {key for _, _, key, _ in messages}
            await reader.until(lambda: landed() >= wanted, timeout=120, what="all after the restart")
        assert await asyncio.to_thread(bridge.terminate, GRACE) == 0, bridge.log()
    finally:
        bridge.close()
