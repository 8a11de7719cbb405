"""Fixtures for the processors against real Kafka: topics of its own, `thermoflow process` as a subprocess."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.group import MemberAssignment
from aiokafka.structs import ConsumerRecord, RecordMetadata

from tests.conftest import ROOT, Endpoints, unique_name
from thermoflow import kafka
from thermoflow.events import (
    AlertEvent,
    Clear,
    Reading,
    decode_alert,
    decode_clear,
    encode,
    is_clear,
    is_watermark,
)
from thermoflow.rules import DEFAULT_RULES_FILE
from thermoflow.settings import ThermoflowSettings


@dataclass
class Worker:
    """One `thermoflow process` subprocess and its log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, *, timeout: float = 60.0) -> int:
        """SIGTERM, then wait: returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"worker did not stop within {timeout}s; log:\n{self.log()[-4000:]}"
            ) from None


@dataclass
class ProcessorRig:
    """A readings topic, an alerts topic, a dead-letter topic, a group and a rules file of this test."""

    settings: ThermoflowSettings
    readings_topic: str
    alerts_topic: str
    deadletter_topic: str
    group: str
    rules_file: Path
    workdir: Path
    workers: list[Worker] = field(default_factory=list)
    producer: Any = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("THERMOFLOW_")}
        env.update(
            {
                "THERMOFLOW_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
                "THERMOFLOW_READINGS_TOPIC": self.readings_topic,
                "THERMOFLOW_ALERTS_TOPIC": self.alerts_topic,
                "THERMOFLOW_DEADLETTER_TOPIC": self.deadletter_topic,
                "THERMOFLOW_PROCESSOR_GROUP": self.group,
                "THERMOFLOW_RULES_FILE": str(self.rules_file),
                "THERMOFLOW_RULES_POLL_INTERVAL": "0.2",
                "THERMOFLOW_MAX_WAIT": "0.1",
                "THERMOFLOW_LOG_LEVEL": "INFO",
                "THERMOFLOW_HTTP_PORT": "0",  # no endpoints: workers of one test would share port 9108
                **extra,
            }
        )
        return env

    def start(self, *args: str, **extra_env: str) -> Worker:
        """Start `thermoflow process` with this rig's settings (flags in ``args``)."""
        log_path = self.workdir / f"worker-{len(self.workers)}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "thermoflow", "process", *args],
                env=self.env(**extra_env),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )
        worker = Worker(proc, log_path)
        self.workers.append(worker)
        return worker

    async def send(self, value: bytes | None, *, key: bytes | None) -> RecordMetadata:
        return await self.producer.send_and_wait(self.readings_topic, value, key=key)

    async def send_readings(self, readings: Iterable[Reading]) -> list[RecordMetadata]:
        futures = [
            await self.producer.send(self.readings_topic, encode(r), key=r.device_id.encode())
            for r in readings
        ]
        return list(await asyncio.gather(*futures))

    async def records(
        self, topic: str, *, until: Callable[[list[ConsumerRecord]], bool], timeout: float = 60.0
    ) -> list[ConsumerRecord]:
        """Read ``topic`` from the start until ``until(records)`` holds (or fail after ``timeout``)."""
        consumer = kafka.consumer(self.settings, topic, group_id=None)
        await consumer.start()
        found: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        try:
            while not until(found):
                if time.monotonic() > deadline:
                    logs = "\n".join(w.log()[-3000:] for w in self.workers)
                    raise AssertionError(
                        f"{topic}: condition not met in {timeout}s, got {len(found)}\n{logs}"
                    )
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    found.extend(batch)
        finally:
            await consumer.stop()
        return found

    async def everything(self, topic: str) -> list[ConsumerRecord]:
        """Every record of ``topic`` written so far (up to its end offsets now)."""
        consumer = AIOKafkaConsumer(**self.settings.kafka_options(), group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            count = (await kafka.partition_counts(self.settings, [topic]))[topic]
            tps = [TopicPartition(topic, p) for p in range(count)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            found: list[ConsumerRecord] = []
            pending = [tp for tp in tps if ends[tp] > 0]
            while pending:
                for batch in (await consumer.getmany(*pending, timeout_ms=500)).values():
                    found.extend(batch)
                pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
            return found
        finally:
            await consumer.stop()

    async def wait_for_topic(self, topic: str, *, timeout: float = 60.0) -> None:
        """Wait until ``topic`` exists (a worker creates it at start), without creating it by reading it."""
        deadline = time.monotonic() + timeout
        while True:
            admin = AIOKafkaAdminClient(**self.settings.kafka_options())
            await admin.start()
            try:
                if topic in await admin.list_topics():
                    return
            finally:
                await admin.close()
            if time.monotonic() > deadline:
                logs = "\n".join(w.log()[-3000:] for w in self.workers)
                raise AssertionError(f"{topic} was not created within {timeout}s\n{logs}")
            await asyncio.sleep(0.5)

    async def assignment(self) -> list[list[int]]:
        """The partitions of the readings topic each member of the group holds now."""
        admin = AIOKafkaAdminClient(**self.settings.kafka_options())
        await admin.start()
        try:
            (response,) = await admin.describe_consumer_groups([self.group])
        finally:
            await admin.close()
        members = []
        for group in response.groups:
            for member in group[5]:
                topics = dict(MemberAssignment.decode(member[4]).assignment) if member[4] else {}
                members.append(sorted(topics.get(self.readings_topic, [])))
        return members

    async def alerts(
        self,
        *,
        until: Callable[[list[AlertEvent]], bool],
        timeout: float = 60.0,
        conditions: Collection[str] = ("above", "below"),
    ) -> list[AlertEvent]:
        """The alerts of ``conditions`` (the thresholds' by default) once ``until`` holds for them."""

        def alerts_of(found: list[ConsumerRecord]) -> list[ConsumerRecord]:
            # Leave out the processors' progress reports, clears and other conditions' alerts.
            return [
                r
                for r in found
                if not is_watermark(r.headers)
                and not is_clear(r.headers)
                and decode_alert(r.value).condition in conditions
            ]

        records = alerts_of(
            await self.records(
                self.alerts_topic,
                until=lambda found: until([decode_alert(r.value) for r in alerts_of(found)]),
                timeout=timeout,
            )
        )
        for record in records:
            assert record.key == decode_alert(record.value).device_id.encode()
        return [decode_alert(r.value) for r in records]

    async def clears(self, *, until: Callable[[list[Clear]], bool], timeout: float = 60.0) -> list[Clear]:
        """The clear records on the alerts topic once ``until`` holds for them."""

        def clears_of(found: list[ConsumerRecord]) -> list[Clear]:
            return [decode_clear(r.value) for r in found if is_clear(r.headers)]

        found = await self.records(self.alerts_topic, until=lambda f: until(clears_of(f)), timeout=timeout)
        return clears_of(found)


@pytest.fixture
async def rig(
    endpoints: Endpoints, new_topic: Callable[..., str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ProcessorRig]:
    workdir = tmp_path_factory.mktemp("processors")
    rules_file = workdir / "rules.yaml"
    shutil.copy(DEFAULT_RULES_FILE, rules_file)
    settings = endpoints.settings()
    rig = ProcessorRig(
        settings=settings,
        readings_topic=new_topic("readings", partitions=6),
        alerts_topic=new_topic("alerts", partitions=2),
        deadletter_topic=new_topic("deadletter", partitions=1),
        group=unique_name("processors"),
        rules_file=rules_file,
        workdir=workdir,
    )
    rig.producer = kafka.producer(settings)
    await rig.producer.start()
    try:
        yield rig
    finally:
        await rig.producer.stop()
        for worker in rig.workers:  # a failed test may leave workers running: stop them (and their children)
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in rig.workers:
            try:
                worker.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()


def reading(device_id: str, value: float, ts: float, *, metric: str = "temperature") -> Reading:
    return Reading(device_id=device_id, metric=metric, value=value, ts=ts, received_at=ts + 0.01)
