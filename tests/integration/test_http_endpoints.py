"""A real bridge serves /metrics, /healthz and /readyz over HTTP; /readyz fails while Kafka is unreachable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp

from tests.conftest import Endpoints, free_port
from tests.integration.ingest.helpers import bridge_settings, mqtt_prefix, publish, wait_for
from thermoflow.ingest.bridge import run_bridge
from thermoflow.metrics import Metrics
from thermoflow.settings import ThermoflowSettings


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def _first_answer(port: int, path: str) -> tuple[int, str]:
    """The first answer once the component listens."""
    while True:
        try:
            return await _get(port, path)
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)


async def test_bridge_serves_its_counts_health_and_readiness(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    port = free_port()
    config = bridge_settings(settings, new_topic, http_port=port)
    prefix = mqtt_prefix(config)
    messages = [(f"{prefix}/freezer-{i % 5}/temperature", f"{-18 + i % 3}".encode()) for i in range(200)]
    messages.append((f"{prefix}/freezer-0/temperature", b"hot"))  # one dead letter
    metrics = Metrics("bridge")
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(config, stop=stop, metrics=metrics))
    try:
        await wait_for(lambda: metrics.counter("mqtt_connects") >= 1, timeout=30, what="connected")
        await asyncio.to_thread(publish, endpoints, messages)
        await wait_for(lambda: metrics.counter("acked") >= len(messages), timeout=60, what="all acked")
        status, text = await _get(port, "/metrics")
        assert status == 200
        assert f'thermoflow_bridge_messages_total{{outcome="acked"}} {len(messages)}.0' in text
        assert 'thermoflow_bridge_dead_letters_total{reason="payload"} 1.0' in text
        assert 'thermoflow_bridge_mqtt_connects_total{outcome="connected"} 1.0' in text
        assert "thermoflow_bridge_ack_latency_seconds_count" in text
        assert (await _get(port, "/healthz"))[0] == 200
        status, text = await _get(port, "/readyz")
        assert (status, json.loads(text)["checks"]) == (200, {"kafka": True, "mqtt": True})
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)


async def test_readyz_fails_while_kafka_is_unreachable(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    port = free_port()
    config = bridge_settings(settings, new_topic, http_port=port, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(config, stop=stop))
    try:
        await asyncio.wait_for(_first_answer(port, "/readyz"), 30)
        await asyncio.sleep(0.5)  # the first probe round has answered
        status, text = await _get(port, "/readyz")
        assert status == 503
        assert json.loads(text)["checks"] == {"kafka": False, "mqtt": False}
        assert (await _get(port, "/healthz"))[0] == 200  # alive: it waits for Kafka, it is not stuck
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
