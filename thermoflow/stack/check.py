"""One real message through each service: what `thermoflow stack check` runs."""

from __future__ import annotations

import asyncio
import threading
import uuid

import psycopg

from thermoflow import kafka, mqtt
from thermoflow.settings import ThermoflowSettings


def mqtt_round_trip(settings: ThermoflowSettings, *, timeout: float = 10.0) -> bytes:
    """Publish one QoS 1 message to a fresh topic and receive it back."""
    topic = f"thermoflow/check/{uuid.uuid4().hex[:8]}"
    payload = b'{"value": 21.5}'
    received = threading.Event()
    got: list[bytes] = []
    client = mqtt.client(settings, client_id=f"thermoflow-check-{uuid.uuid4().hex[:8]}")

    def on_connect(c, _u, _f, reason, _p):  # type: ignore[no-untyped-def]
        c.subscribe(topic, qos=1)

    def on_subscribe(c, _u, _m, _r, _p):  # type: ignore[no-untyped-def]
        c.publish(topic, payload, qos=1)

    def on_message(_c, _u, message):  # type: ignore[no-untyped-def]
        got.append(message.payload)
        received.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    try:
        if not received.wait(timeout):
            raise TimeoutError(f"no MQTT message back from {settings.mqtt_url} in {timeout:.0f}s")
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


async def kafka_round_trip(settings: ThermoflowSettings, *, timeout: float = 30.0) -> bytes:
    """Produce one record to a fresh topic and consume it back."""
    topic = f"thermoflow-check-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings, {topic: 1})
    producer = kafka.producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"value": 21.5}', key=b"check")
    finally:
        await producer.stop()
    consumer = kafka.consumer(settings, topic, group_id=None)
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout)
    finally:
        await consumer.stop()
    assert record.value is not None
    return bytes(record.value)


def postgres_round_trip(settings: ThermoflowSettings) -> str:
    """Ask the server for its version."""
    with psycopg.connect(settings.database_dsn, connect_timeout=10) as conn:
        row = conn.execute("SELECT version()").fetchone()
    assert row is not None
    return str(row[0])
