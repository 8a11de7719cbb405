"""The bridge while Kafka is down: it acks nothing, holds no more than the in-flight window, and
delivers everything by itself once Kafka is back. Kafka here is a private node, stopped mid-stream."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable, Iterator

import pytest

from ingest.bridge import run_bridge
from tests.conftest import ROOT, Endpoints, free_port, unique_name
from tests.integration.ingest.helpers import KafkaReader, ingest_settings, publish, wait_for
from tests.integration.ingest.test_bridge import valid_message
from thermoflow import kafka
from thermoflow.events import decode_reading
from thermoflow.metrics import Metrics
from thermoflow.settings import ThermoflowSettings
from thermoflow.stack.services import Kafka
from thermoflow.stack.stack import default_cache_dir

WINDOW = 200  # the bridge's MQTT 5 receive maximum: what the broker lets it hold unacked


@pytest.fixture
def private_kafka() -> Iterator[Kafka]:
    home = ROOT / ".thermoflow" / f"kafka-{uuid.uuid4().hex[:8]}"
    node = Kafka(home=home, host="127.0.0.1", port=free_port(), controller_port=free_port(),
                 cache_dir=default_cache_dir(), heap="512m")  # fmt: skip
    node.up()
    yield node
    node.down()
    shutil.rmtree(home, ignore_errors=True)


async def test_kafka_down_holds_the_acks_bounds_memory_and_recovers_by_itself(
    endpoints: Endpoints, settings: ThermoflowSettings, private_kafka: Kafka
) -> None:
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
    await kafka.ensure_topics(config, {config.readings_topic: 6, config.deadletter_topic: 1})
    messages = [valid_message(i, prefix) for i in range(3000)]
    stream = [(topic, payload) for topic, payload, _, _ in messages]
    metrics = Metrics("bridge")
    counter: Callable[[str], int] = metrics.counter
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(config, stop=stop, metrics=metrics))
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
