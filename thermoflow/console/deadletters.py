"""The dead-letter page's data: the latest dead letters, tailed from Kafka, and their redrive.

The console keeps the newest ``console_deadletters`` records of the dead-letter topic in
memory, read by one group-less consumer from the end backwards at start and then as they
come, so the page renders without a Kafka round trip.

**Redrive** sends a dead letter back to the bridge's input: the MQTT broker, on the topic the
device published to (the letter's ``source``), at QoS 1. The bridge judges it again exactly as
the first time (topic mapping, codec, rules), so after a codec or mapping fix it becomes
readings, and if it is still bad it comes back as a new dead letter. Only ``ingest`` letters
came from MQTT, and only whole ones can be sent again (a cut payload is not the device's).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from thermoflow import mqtt, topics
from thermoflow.console.follow import TopicFollower
from thermoflow.events import EventDecodeError, parse_dead_letter_headers
from thermoflow.kafka import partition_counts
from thermoflow.settings import ThermoflowSettings


@dataclass(frozen=True)
class Letter:
    """One dead letter as the page shows it."""

    partition: int
    offset: int
    timestamp_ms: int
    error: str
    stage: str
    source: str
    failed_at: float
    payload: bytes
    truncated: bool

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def redrivable(self) -> str | None:
        """None if it can go back to the bridge, else why not."""
        if self.stage != "ingest":
            return f"came from the {self.stage} stage, not from MQTT"
        if self.truncated:
            return "its payload was cut to fit in Kafka"
        if not self.source or any(c in self.source for c in "+#\x00"):
            return "its source is not an MQTT topic one can publish to"
        return None


def letter_of(partition: int, offset: int, timestamp_ms: int, headers: Iterable[tuple[str, bytes]],
              value: bytes | None) -> Letter:  # fmt: skip
    """A Kafka record of the dead-letter topic as a :class:`Letter`, whatever its headers hold."""
    pairs = list(headers)
    stage: str
    try:
        meta = parse_dead_letter_headers(pairs)
        error, stage, source, failed_at = meta.error, meta.stage, meta.source, meta.failed_at
    except EventDecodeError as exc:
        error, stage, source, failed_at = (
            f"(unreadable dead letter: {exc})",
            "unknown",
            "",
            timestamp_ms / 1000,
        )
    truncated = any(name == topics.HEADER_TRUNCATED for name, _ in pairs)
    return Letter(partition, offset, timestamp_ms, error, stage, source, failed_at, value or b"", truncated)


class DeadLetterTail(TopicFollower):
    """The newest ``keep`` dead letters of ``settings.deadletter_topic``, kept current by a task."""

    name = "deadletter-tail"

    def __init__(self, settings: ThermoflowSettings, *, keep: int) -> None:
        self.settings = settings
        self.topic = settings.deadletter_topic
        self.keep = keep
        self._letters: deque[Letter] = deque(maxlen=keep)
        self.caught_up = asyncio.Event()

    def letters(self, *, reason: str | None = None) -> list[Letter]:
        """Newest first; only those whose error is exactly ``reason`` when given."""
        found = [letter for letter in reversed(self._letters) if reason is None or letter.error == reason]
        return found

    def find(self, partition: int, offset: int) -> Letter | None:
        return next((x for x in self._letters if x.partition == partition and x.offset == offset), None)

    def reasons(self) -> list[tuple[str, int]]:
        """Each error text and how many letters have it, commonest first."""
        counts: dict[str, int] = {}
        for letter in self._letters:
            counts[letter.error] = counts.get(letter.error, 0) + 1
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))

    async def _follow(self) -> None:
        count = (await partition_counts(self.settings, [self.topic], timeout=10.0)).get(self.topic)
        if not count:
            raise LookupError(f"topic {self.topic} not found")
        consumer = AIOKafkaConsumer(
            **self.settings.kafka_options(), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=500
        )
        try:
            await consumer.start()
            partitions = range(count)
            assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            ends: dict[TopicPartition, int] = await consumer.end_offsets(assigned)
            starts: dict[TopicPartition, int] = await consumer.beginning_offsets(assigned)
            for tp in assigned:  # each partition's last `keep`: the newest `keep` overall are among them
                consumer.seek(tp, max(starts[tp], ends[tp] - self.keep))
            backlog = {tp: ends[tp] for tp in assigned if ends[tp] > max(starts[tp], ends[tp] - self.keep)}
            if not backlog:
                self.caught_up.set()
            while True:
                batches: dict[TopicPartition, list[Any]] = await consumer.getmany(
                    timeout_ms=1000, max_records=5000
                )
                fresh = [
                    letter_of(r.partition, r.offset, r.timestamp, r.headers, r.value)
                    for records in batches.values()
                    for r in records
                ]
                # Across partitions, by time: the deque keeps the newest.
                for letter in sorted(fresh, key=lambda x: (x.timestamp_ms, x.partition, x.offset)):
                    self._letters.append(letter)
                for tp, records in batches.items():
                    if tp in backlog and records and records[-1].offset + 1 >= backlog[tp]:
                        del backlog[tp]
                if not backlog:
                    self.caught_up.set()
        finally:
            await consumer.stop()


class RedriveError(RuntimeError):
    """The broker did not take a redriven message."""


def publish_to_bridge(settings: ThermoflowSettings, letters: list[Letter], *, timeout: float = 10.0) -> int:
    """Publish each letter's payload on its MQTT topic at QoS 1 and wait for the broker's acks.

    Blocking (paho's network thread): call it in a worker thread. Returns how many went out.
    """
    client = mqtt.client(settings, client_id=f"thermoflow-console-{secrets.token_hex(4)}")
    client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30)
    client.loop_start()
    try:
        infos = [client.publish(letter.source, letter.payload, qos=1) for letter in letters]
        for info in infos:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise RedriveError(
                    f"the MQTT broker at {settings.mqtt_host}:{settings.mqtt_port} did not ack"
                )
    finally:
        client.disconnect()
        client.loop_stop()
    return len(letters)
