"""The bridge rides out a broker restart: it reconnects, resumes its persistent session, loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.conftest import Endpoints
from tests.integration.ingest.helpers import KafkaReader, bridge_settings, mqtt_prefix, publish, wait_for
from tests.integration.ingest.test_bridge import valid_message
from thermoflow.events import decode_reading
from thermoflow.ingest.bridge import run_bridge
from thermoflow.metrics import Metrics
from thermoflow.settings import ThermoflowSettings
from thermoflow.stack.services import Mosquitto


async def test_broker_restart_mid_stream_loses_nothing(
    endpoints: Endpoints,
    settings: ThermoflowSettings,
    new_topic: Callable[..., str],
    private_broker: Mosquitto,
) -> None:
    config = bridge_settings(settings, new_topic, mqtt_url=private_broker.address)
    here = Endpoints(
        mqtt_url=private_broker.address,
        kafka_bootstrap=endpoints.kafka_bootstrap,
        database_url=endpoints.database_url,
        origin="own broker",
    )
    prefix = mqtt_prefix(config)
    messages = [valid_message(i, prefix) for i in range(4000)]
    stream = [(topic, payload) for topic, payload, _, _ in messages]
    metrics = Metrics("bridge")
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(config, stop=stop, metrics=metrics))
    try:
        async with KafkaReader(endpoints.kafka_bootstrap, config.readings_topic) as kafka:
            readings = kafka.records[config.readings_topic]
            await wait_for(lambda: metrics.counter("mqtt_connects") >= 1, timeout=30, what="connected")
            await asyncio.sleep(0.5)  # subscribed
            await asyncio.to_thread(publish, here, stream[:2000])
            await kafka.until_count(config.readings_topic, 1000, timeout=60)
            await asyncio.to_thread(private_broker.down)
            await asyncio.to_thread(private_broker.up)
            await asyncio.to_thread(publish, here, stream[2000:])
            seen: set[tuple[str, float]] = set()
            wanted = {key for _, _, key, _ in messages}

            def all_seen() -> bool:
                seen.update((decode_reading(r.value).device_id, decode_reading(r.value).ts) for r in readings)
                readings.clear()
                return seen >= wanted

            await kafka.until(all_seen, timeout=90, what="every reading after the broker restart")
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    assert seen == wanted
    assert metrics.counter("mqtt_connects") >= 2  # it reconnected by itself
