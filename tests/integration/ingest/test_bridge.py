"""The bridge against real Mosquitto and Kafka: every valid reading in Kafka, every bad one dead-lettered,
nothing lost when the bridge is killed with SIGKILL mid-stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import Endpoints
from tests.integration.ingest.helpers import (
    Component,
    KafkaReader,
    bridge_settings,
    mqtt_prefix,
    publish,
    start_thread,
)
from thermoflow import topics
from thermoflow.events import decode_reading, parse_dead_letter_headers
from thermoflow.ingest.bridge import run_bridge
from thermoflow.ingest.settings import IngestSettings
from thermoflow.metrics import Metrics
from thermoflow.settings import ThermoflowSettings

DEVICES = 1000
MESSAGES = 10_000
T0 = float(int(time.time()) // 3600 * 3600 - 86_400)  # a day ago: inside the bridge's ts window

#: Malformed payloads, each with the words its dead letter's reason must contain.
MALFORMED: list[tuple[bytes, str]] = [
    (b"\xff\xfe\x00\x01", "not valid UTF-8"),
    (b"NaN", "not a finite number"),
    (b'{"value": "warm", "ts": 1}', "`value` must be a number"),
    (b'{"value": 1.0, "unit": "Rankine"}', "unknown unit"),
    (b"x" * 70_000, "exceeds the limit of 65536"),
    (b'{"value": 1.0, "ts": "yesterday"}', "neither epoch seconds nor RFC 3339"),
    (b'{"value": 1.0', "not valid JSON"),
    (b"[]", "SenML pack is empty"),
    (b'{"reading": 3}', "no `value`"),
    (b"true", "not an object, number or SenML array"),
]


def valid_message(i: int, prefix: str) -> tuple[str, bytes, tuple[str, float], float]:
    """The i-th valid message in one of four shapes: (topic, payload, (device, ts), °C value)."""
    device = f"freezer-{i % DEVICES:04d}"
    ts = T0 + i + 0.25
    celsius = -20.0 + (i % 97) / 4
    shape = i % 4
    if shape == 0:
        payload = json.dumps({"value": celsius, "ts": ts, "seq": i, "unit": "C"})
    elif shape == 1:  # Fahrenheit, epoch milliseconds, `temp`
        payload = json.dumps({"temp": celsius * 9 / 5 + 32, "ts": int(ts * 1000), "unit": "F"})
    elif shape == 2:  # SenML
        payload = json.dumps([{"n": "temperature", "u": "Cel", "v": celsius, "t": ts}])
    else:  # Kelvin, RFC 3339, `temperature`
        when = datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
        payload = json.dumps({"temperature": celsius + 273.15, "ts": when, "unit": "K"})
    return f"{prefix}/{device}/temperature", payload.encode(), (device, ts), celsius


async def test_valid_readings_land_in_kafka_and_malformed_ones_in_the_dead_letter_topic(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    config = bridge_settings(settings, new_topic)
    prefix = mqtt_prefix(config)
    expected: dict[tuple[str, float], float] = {}
    bad: dict[bytes, str] = {}
    messages: list[tuple[str, bytes]] = []
    for i in range(MESSAGES):
        if i % 100 == 50:  # 1% malformed
            payload, words = MALFORMED[(i // 100) % len(MALFORMED)]
            topic = f"{prefix}/freezer-{i % DEVICES:04d}/temperature"
            messages.append((topic, payload))
            bad.setdefault(payload, words)
            continue
        topic, payload, key, celsius = valid_message(i, prefix)
        messages.append((topic, payload))
        expected[key] = celsius

    stop = asyncio.Event()
    metrics = Metrics("bridge")
    bridge = asyncio.create_task(run_bridge(config, stop=stop, metrics=metrics))
    try:
        async with KafkaReader(
            endpoints.kafka_bootstrap, config.readings_topic, config.deadletter_topic
        ) as kafka:
            await asyncio.sleep(1.0)  # connected and subscribed (QoS 1 session)
            await asyncio.to_thread(publish, endpoints, messages)
            readings = kafka.records[config.readings_topic]
            letters = kafka.records[config.deadletter_topic]
            await kafka.until(
                lambda: len(readings) >= len(expected) and len(letters) >= MESSAGES - len(expected),
                timeout=120,
                what="all readings and dead letters",
            )
            await kafka.settle(2.0)
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)

    assert len(expected) == 9_900
    # Exactly the valid ones: each once, keyed by its device, with its value in °C.
    seen = Counter((decode_reading(r.value).device_id, decode_reading(r.value).ts) for r in readings)
    assert set(seen) == set(expected)
    assert max(seen.values()) == 1
    for record in readings:
        reading = decode_reading(record.value)
        assert record.key == reading.device_id.encode()
        assert reading.value == pytest.approx(expected[(reading.device_id, reading.ts)], abs=1e-9)
        headers = dict(record.headers)
        assert headers[topics.HEADER_MQTT_TOPIC] == f"{prefix}/{reading.device_id}/temperature".encode()
        assert headers[topics.HEADER_CONTENT_TYPE] == b"application/json"
    # The malformed ones: original bytes, the reason, the MQTT topic as source.
    assert len(letters) == MESSAGES - len(expected)
    for record in letters:
        letter = parse_dead_letter_headers(record.headers)
        assert record.value in bad
        assert bad[record.value] in letter.error, (record.value[:40], letter.error)
        assert letter.stage == "ingest" and letter.source.startswith(f"{prefix}/freezer-")
    counters = metrics.snapshot()["counters"]
    assert counters["received"] == MESSAGES
    assert counters["acked"] == MESSAGES
    assert counters["dead_lettered"] == 100
    assert counters["produced"] == 9_900


async def test_sigkill_mid_stream_loses_no_reading_and_sigterm_exits_cleanly(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    config = bridge_settings(settings, new_topic)
    prefix = mqtt_prefix(config)
    messages = [valid_message(i, prefix) for i in range(MESSAGES)]
    wanted = {key for _, _, key, _ in messages}
    bridge = Component("bridge", config, tmp_path)
    bridge.start()
    try:
        async with KafkaReader(endpoints.kafka_bootstrap, config.readings_topic) as kafka:
            readings = kafka.records[config.readings_topic]
            await bridge.wait_log("mqtt_subscribed")
            stream = [(topic, payload) for topic, payload, _, _ in messages]
            published = [0]
            publisher, errors = start_thread(
                lambda: publish(endpoints, stream, pause_every=100, pause=0.03, published=published)
            )
            # Kill it three times while readings flow (the last two while it catches up on a backlog).
            for kill in range(3):
                await kafka.until_count(config.readings_topic, len(readings) + 1000, timeout=60)
                bridge.kill()
                assert published[0] < MESSAGES or kill > 0, "the first kill must come mid-stream"
                if kill < 2:
                    bridge.start()
            await asyncio.to_thread(publisher.join, 120)
            assert not errors, errors
            bridge.start()  # the same client id: resumes the persistent session
            seen: set[tuple[str, float]] = set()

            def all_seen() -> bool:
                seen.update((decode_reading(r.value).device_id, decode_reading(r.value).ts) for r in readings)
                readings.clear()
                return seen >= wanted

            try:
                await kafka.until(all_seen, timeout=90, what="every reading after the restart")
            except AssertionError:
                raise AssertionError(f"{len(wanted - seen)} readings never reached Kafka") from None
            assert seen == wanted
            assert bridge.terminate() == 0, bridge.log()
    finally:
        bridge.close()


async def test_mqtt_311_and_a_shared_subscription_split_the_load_without_loss(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    base = bridge_settings(settings, new_topic, mqtt_share_group="bridges")
    second: IngestSettings = base.model_copy(update={"mqtt_client_id": base.mqtt_client_id + "-b"})
    legacy = base.model_copy(update={"mqtt_client_id": base.mqtt_client_id + "-c", "mqtt_version": "3.1.1"})
    prefix = mqtt_prefix(base)
    messages = [valid_message(i, prefix) for i in range(3000)]
    stop = asyncio.Event()
    meters = [Metrics("bridge") for _ in range(3)]
    bridges = [
        asyncio.create_task(run_bridge(config, stop=stop, metrics=meter))
        for config, meter in zip([base, second, legacy], meters, strict=True)
    ]
    try:
        async with KafkaReader(endpoints.kafka_bootstrap, base.readings_topic) as kafka:
            await asyncio.sleep(1.5)
            await asyncio.to_thread(publish, endpoints, [(t, p) for t, p, _, _ in messages])
            readings = kafka.records[base.readings_topic]
            await kafka.until(lambda: len(readings) >= len(messages), timeout=60, what="3000 readings")
            await kafka.settle(1.0)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*bridges), 60)
    keys = Counter((decode_reading(r.value).device_id, decode_reading(r.value).ts) for r in readings)
    assert set(keys) == {key for _, _, key, _ in messages} and max(keys.values()) == 1
    shares = [meter.counter("received") for meter in meters]
    assert sum(shares) == len(messages)
    assert all(share > 0 for share in shares), shares  # each bridge, 3.1.1 included, took a part
