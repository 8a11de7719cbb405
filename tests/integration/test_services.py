"""Each service is real: a Kafka round trip with keys and headers, MQTT QoS 1, PostgreSQL COPY."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import psycopg
import pytest
from aiokafka import ConsumerRecord

from tests.conftest import Endpoints, unique_name
from thermoflow import db, kafka, mqtt
from thermoflow.settings import ThermoflowSettings


async def test_kafka_round_trip_keeps_keys_headers_and_order(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("roundtrip", partitions=3)
    sent = [(f"dev-{i % 4}".encode(), f'{{"n": {i}}}'.encode()) for i in range(200)]
    producer = kafka.producer(settings)
    await producer.start()
    try:
        batch = [
            await producer.send(topic, value, key=key, headers=[("mqtt-topic", key), ("n", value)])
            for key, value in sent
        ]
        await asyncio.gather(*batch)
    finally:
        await producer.stop()

    consumer = kafka.consumer(settings, topic, group_id=unique_name("group"))
    await consumer.start()
    received: list[ConsumerRecord[bytes, bytes]] = []
    try:
        while len(received) < len(sent):
            chunk = await consumer.getmany(timeout_ms=5000)
            assert chunk, f"only {len(received)} of {len(sent)} records came back"
            for records in chunk.values():
                received.extend(records)
    finally:
        await consumer.stop()

    assert sorted((r.key, r.value) for r in received) == sorted(sent)
    assert all(dict(r.headers) == {"mqtt-topic": r.key, "n": r.value} for r in received)
    # Same key, same partition, in the order sent.
    for key in {k for k, _ in sent}:
        mine = [r for r in received if r.key == key]
        assert len({r.partition for r in mine}) == 1
        assert [r.value for r in sorted(mine, key=lambda r: r.offset)] == [v for k, v in sent if k == key]


def test_mqtt_qos1_publish_subscribe_round_trip(settings: ThermoflowSettings) -> None:
    topic = f"{unique_name('mqtt')}/sensors/dev-1/temperature"
    payloads = [f'{{"value": {i}}}'.encode() for i in range(100)]
    got: list[tuple[bytes, int]] = []
    done = threading.Event()
    subscribed = threading.Event()

    subscriber = mqtt.client(settings, client_id=unique_name("sub"))
    subscriber.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: object, _u: object, message: object) -> None:
        got.append((message.payload, message.qos))  # type: ignore[attr-defined]
        if len(got) == len(payloads):
            done.set()

    subscriber.on_message = on_message
    subscriber.connect(settings.mqtt_host, settings.mqtt_port)
    subscriber.subscribe(topic, qos=1)
    subscriber.loop_start()
    publisher = mqtt.client(settings, client_id=unique_name("pub"))
    publisher.connect(settings.mqtt_host, settings.mqtt_port)
    publisher.loop_start()
    try:
        assert subscribed.wait(10)
        infos = [publisher.publish(topic, payload, qos=1) for payload in payloads]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
        assert done.wait(10), f"received {len(got)} of {len(payloads)}"
    finally:
        for client in (publisher, subscriber):
            client.disconnect()
            client.loop_stop()
    assert [payload for payload, _ in got] == payloads
    assert {qos for _, qos in got} == {1}


def test_postgres_copy_and_query(settings: ThermoflowSettings) -> None:
    rows = [(f"dev-{i}", float(i) / 10) for i in range(1000)]
    with db.connect(settings) as conn:
        conn.execute("CREATE TABLE copied (device_id text PRIMARY KEY, value double precision)")
        with conn.cursor() as cur, cur.copy("COPY copied (device_id, value) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        count, total = conn.execute("SELECT count(*), sum(value) FROM copied").fetchone() or (0, 0)
        schema = conn.execute("SELECT current_schema()").fetchone()
    assert count == 1000
    assert total == pytest.approx(sum(v for _, v in rows))
    assert schema == (settings.database_schema,)


def test_migrations_apply_once_and_are_recorded(settings: ThermoflowSettings) -> None:
    first = db.migrate(settings)
    again = db.migrate(settings)
    assert first == [m.version for m in db.available_migrations()]
    assert again == []
    with db.connect(settings) as conn:
        recorded = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == first


def test_endpoints_are_real_services(endpoints: Endpoints) -> None:
    with psycopg.connect(endpoints.database_url) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
    assert version is not None and int(version[0]) >= 130000
