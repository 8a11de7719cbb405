"""Helpers of the ingest integration tests: settings, a paho publisher, a Kafka reader, subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import sql
from pydantic import SecretStr

from tests.conftest import ROOT, Endpoints, unique_name
from thermoflow.events import Reading, encode
from thermoflow.ingest.settings import IngestSettings
from thermoflow.kafka import producer
from thermoflow.settings import ThermoflowSettings


def ingest_settings(base: ThermoflowSettings, **overrides: Any) -> IngestSettings:
    """The test's connection settings (own schema) as ingest settings, with overrides."""
    values = {name: getattr(base, name) for name in ThermoflowSettings.model_fields}
    return IngestSettings(**{**values, "mqtt_session_expiry": 600, "metrics_interval": 2.0, **overrides})


def bridge_settings(
    base: ThermoflowSettings, new_topic: Callable[..., str], **overrides: Any
) -> IngestSettings:
    """A bridge on MQTT topics of its own (``<prefix>/<device>/temperature``) into new Kafka topics."""
    prefix = unique_name("sensors")
    return ingest_settings(
        base,
        readings_topic=new_topic("readings", partitions=6),
        deadletter_topic=new_topic("deadletter", partitions=2),
        mqtt_topics=f"{prefix}/+/temperature",
        topic_template=f"{prefix}/{{device_id}}/{{metric}}",
        mqtt_client_id=unique_name("bridge"),
        **overrides,
    )


def mqtt_prefix(settings: IngestSettings) -> str:
    return settings.topic_template.split("/", 1)[0]


def env_of(settings: IngestSettings) -> dict[str, str]:
    """The ``THERMOFLOW_*`` environment that gives a subprocess these settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("THERMOFLOW_")}
    for name in IngestSettings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        env[f"THERMOFLOW_{name.upper()}"] = (
            value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        )
    return env


class Component:
    """`thermoflow bridge` or `thermoflow sink` as a real subprocess, for kill -9 tests."""

    def __init__(self, command: str, settings: IngestSettings, log_dir: Path) -> None:
        self.command = command
        self.env = env_of(settings)
        self.log_dir = log_dir
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        log = (self.log_dir / f"{self.command}-{self.runs}.log").open("wb")
        with log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "thermoflow", self.command],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )

    async def wait_log(self, event: str, *, timeout: float = 60) -> None:
        """Until this run's log has the event (e.g. ``mqtt_subscribed``)."""
        path = self.log_dir / f"{self.command}-{self.runs}.log"
        deadline = time.monotonic() + timeout
        while f'"{event}"' not in path.read_text(errors="replace"):
            assert self.process is not None and self.process.poll() is None, self.log()
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} in {path} within {timeout}s:\n{self.log()}")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob(f"{self.command}-*.log"))
        )

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def publish(
    endpoints: Endpoints,
    messages: Iterable[tuple[str, bytes]],
    *,
    qos: int = 1,
    pause_every: int = 0,
    pause: float = 0.0,
    published: list[int] | None = None,
) -> None:
    """Publish with one paho client and wait for every PUBACK (blocking: call it in a thread)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique_name("pub"))
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    host, port = endpoints.mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
    client.connect(host, int(port))
    client.loop_start()
    try:
        infos = []
        for n, (topic, payload) in enumerate(messages, 1):
            infos.append(client.publish(topic, payload, qos=qos))
            if published is not None:
                published[0] = n
            if pause_every and n % pause_every == 0:
                time.sleep(pause)
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


class KafkaReader:
    """Reads topics from the beginning, without a group, and keeps every record."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.records: dict[str, list[ConsumerRecord[bytes, bytes]]] = {topic: [] for topic in topics}
        self._consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest")

    async def __aenter__(self) -> KafkaReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()

    async def poll(self, timeout: float = 0.5) -> None:
        fetched = await self._consumer.getmany(timeout_ms=int(timeout * 1000), max_records=20_000)
        for tp, batch in fetched.items():
            self.records[tp.topic].extend(batch)

    async def until(self, done: Callable[[], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                counts = {topic: len(records) for topic, records in self.records.items()}
                raise AssertionError(f"timed out waiting for {what}; records so far: {counts}")
            await self.poll()

    async def until_count(self, topic: str, count: int, *, timeout: float) -> None:
        await self.until(
            lambda: len(self.records[topic]) >= count, timeout=timeout, what=f"{count} in {topic}"
        )

    async def settle(self, seconds: float = 2.0) -> None:
        """Read on for a while, so that records that should not be there would show."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self.poll(0.5)


async def produce_readings(
    bootstrap_settings: ThermoflowSettings, topic: str, readings: list[Reading]
) -> None:
    kafka = producer(bootstrap_settings)
    await kafka.start()
    try:
        futures = [await kafka.send(topic, encode(r), key=r.device_id.encode()) for r in readings]
        await asyncio.gather(*futures)
    finally:
        await kafka.stop()


async def produce_raw(bootstrap_settings: ThermoflowSettings, topic: str, values: list[bytes]) -> None:
    kafka = producer(bootstrap_settings)
    await kafka.start()
    try:
        await asyncio.gather(*[await kafka.send(topic, value) for value in values])
    finally:
        await kafka.stop()


def count_rows(settings: ThermoflowSettings, table: str = "readings") -> int:
    """Rows in the test schema's table (0 while it does not exist yet)."""
    with psycopg.connect(settings.database_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f"{settings.database_schema}.{table}",)).fetchone()
        if exists is None or exists[0] is None:
            return 0
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(settings.database_schema), sql.Identifier(table)
            )
        ).fetchone()
        assert row is not None
        return int(row[0])


async def wait_for(check: Callable[[], bool], *, timeout: float, what: str, every: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


async def committed(settings: IngestSettings, topic: str, partitions: int) -> tuple[int, int]:
    """(offsets the sink's group committed, end offsets), summed over the topic's partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.sink_group)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        done = 0
        for tp in tps:
            done += (await consumer.committed(tp)) or 0
        return done, sum(ends.values())
    finally:
        await consumer.stop()


def start_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``target`` in a thread; its exception lands in the returned list."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors
