"""Kafka plumbing of the alerts component: the notifier's compacted state topic and dead letters.

Why a compacted topic of our own for the notifier's state: the notifier is a plain aiokafka
consumer (no faust worker to host a table), its state is one small record per (device, rule),
and a compacted topic keeps exactly the latest of each, survives restarts and any number of
instances, and needs no database (the notifier must keep working while PostgreSQL is down).
The notifier writes a batch's changed states (acks=all) *after* the batch's notifications are
delivered or dead-lettered and *before* it commits the batch's offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from thermoflow import kafka, tracing
from thermoflow.alerts.lifecycle import Incident, decode_incident
from thermoflow.alerts.notification import Notification, to_json
from thermoflow.events import (
    CLEARED_CONDITIONS,
    Ack,
    AlertEvent,
    Clear,
    DeadLetter,
    EventDecodeError,
    IncidentKind,
    Watermark,
    dead_letter_headers,
    decode_ack,
    decode_alert,
    decode_clear,
    decode_watermark,
    is_ack,
    is_clear,
    is_watermark,
    kafka_source,
)
from thermoflow.logs import get_logger
from thermoflow.settings import ThermoflowSettings

log = get_logger(__name__)

_encoder = msgspec.json.Encoder()


def state_key(device_id: str, rule_id: str, kind: IncidentKind = "threshold") -> bytes:
    """The compacted key of an incident's state: threshold incidents keep the key they had before
    kinds existed (so their persisted states still compact), the other kinds add theirs."""
    if kind == "threshold":
        return f"{device_id}\x1f{rule_id}".encode()
    return f"{device_id}\x1f{rule_id}\x1f{kind}".encode()


async def ensure_state_topic(settings: ThermoflowSettings, name: str) -> list[int]:
    """Create the compacted state topic if missing (one partition: it is small); its partitions."""
    admin = AIOKafkaAdminClient(**settings.kafka_options(), request_timeout_ms=30_000)
    await admin.start()
    try:
        if name not in set(await admin.list_topics()):
            topic = NewTopic(
                name=name,
                num_partitions=1,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
        # A topic created a moment ago may not show its partitions yet (fresh clusters): wait.
        for _ in range(100):
            described = await admin.describe_topics([name])
            partitions = sorted(p["partition"] for d in described for p in d["partitions"])
            if partitions:
                return partitions
            await asyncio.sleep(0.2)
        raise RuntimeError(f"Kafka shows no partitions for the notifier's state topic {name!r}")
    finally:
        await admin.close()


async def load_states(settings: ThermoflowSettings, topic: str) -> list[Incident]:
    """Read the state topic from its start to its current end: the latest state of each key."""
    partitions = await ensure_state_topic(settings, topic)
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer = kafka.consumer(settings, group_id=None, enable_auto_commit=False)
    await consumer.start()
    latest: dict[bytes, Incident] = {}
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if record.key is None:
                        continue
                    if record.value is None:  # a tombstone
                        latest.pop(record.key, None)
                        continue
                    incident = decode_incident(record.value)
                    if incident is None:  # unreadable: taken as no state
                        log.warning("state_record_unreadable", topic=topic, offset=record.offset)
                        latest.pop(record.key, None)
                    else:
                        latest[record.key] = incident
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return list(latest.values())


async def write_states(producer: AIOKafkaProducer, topic: str, incidents: Sequence[Incident]) -> None:
    """Persist states and wait until Kafka has them (acks=all)."""
    futures = [
        await producer.send(
            topic,
            _encoder.encode(incident),
            key=state_key(incident.device_id, incident.rule_id, incident.kind),
        )
        for incident in incidents
    ]
    if futures:
        await asyncio.gather(*futures)


class KafkaDeadLetters:
    """Dead letters of stage ``alerts`` on the dead-letter topic, keyed by device id."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def send_raw(self, value: bytes, *, key: bytes | None, reason: str, source: str) -> None:
        letter = DeadLetter(error=reason, stage="alerts", source=source, failed_at=time.time())
        future = await self._producer.send(self._topic, value, key=key, headers=dead_letter_headers(letter))
        await future

    async def dead_letter(self, notification: Notification, *, channel: str, reason: str) -> None:
        """A notification no channel attempt could deliver: its JSON body, with the reason."""
        await self.send_raw(
            to_json(notification),
            key=notification.device_id.encode(),
            reason=reason,
            source=f"alerts.notify/{channel}",
        )


Event = AlertEvent | Clear | Watermark | Ack


@dataclass
class DecodedBatch:
    """A fetched batch: its valid records in order (alerts, clears, watermarks and acks, with their
    partition) and the offsets to commit."""

    events: list[tuple[int, Event]] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    received: int = 0
    invalid: int = 0
    #: The ``traceparent`` header of each alert that had one, by ``alert_id`` (:mod:`thermoflow.tracing`).
    traces: dict[str, bytes] = field(default_factory=dict)

    @property
    def alerts(self) -> list[tuple[int, AlertEvent]]:
        return [(p, e) for p, e in self.events if isinstance(e, AlertEvent)]

    @property
    def watermarks(self) -> list[tuple[int, Watermark]]:
        return [(p, e) for p, e in self.events if isinstance(e, Watermark)]

    @property
    def incident_events(self) -> list[tuple[int, AlertEvent | Clear]]:
        """The alerts and clears, in order: what changes incidents in the store. Not the acks: the
        store has each one already (:func:`thermoflow.alerts.ack.acknowledge_incident` wrote it
        before sending the record, which is for the notifier)."""
        return [(p, e) for p, e in self.events if isinstance(e, AlertEvent | Clear)]


def decode_event(value: bytes, headers: Sequence[tuple[str, bytes]] | None) -> Event:
    """One ``telemetry.alerts`` record, told apart by its ``kind`` header (none: an alert).

    Raises:
        EventDecodeError: naming what is wrong, for the dead letter's reason.
    """
    if is_watermark(headers):
        return decode_watermark(value)
    if is_clear(headers):
        return checked_clear(decode_clear(value))
    if is_ack(headers):
        return decode_ack(value)
    return decode_alert(value)


def checked_clear(clear: Clear) -> Clear:
    """The clear, if it can end an incident: of a condition that clears on data, not before its silence.

    >>> from thermoflow.events import Clear
    >>> checked_clear(Clear(device_id="f-1", rule_id="r", condition="offline", since=9.0, cleared_at=2.0,
    ...                     detected_at=2.0))
    Traceback (most recent call last):
    ...
    thermoflow.events.EventDecodeError: invalid clear: `cleared_at` 2.0 is before `since` 9.0
    """
    if clear.condition not in CLEARED_CONDITIONS:
        cleared = ", ".join(sorted(CLEARED_CONDITIONS))
        raise EventDecodeError(
            f"invalid clear: condition {clear.condition!r} does not end on a clear (only {cleared} do)"
        )
    if not clear.cleared_at >= clear.since:
        raise EventDecodeError(
            f"invalid clear: `cleared_at` {clear.cleared_at!r} is before `since` {clear.since!r}"
        )
    return clear


async def decode_batch(
    batch: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]], dead_letters: KafkaDeadLetters
) -> DecodedBatch:
    """Decode every record, in order per partition; an invalid one goes to the dead-letter topic.

    A record with the ``kind: watermark`` header is a processor's watermark, one with ``kind:
    clear`` a :class:`~thermoflow.events.Clear`, one with ``kind: ack`` an operator's
    :class:`~thermoflow.events.Ack`, any other an alert (:func:`decode_event`).
    """
    decoded = DecodedBatch()
    for tp, records in batch.items():
        for record in records:
            traceparent = tracing.header_of(record.headers)
            try:
                event = decode_event(record.value or b"", record.headers)
            except EventDecodeError as exc:
                source = kafka_source(topic=tp.topic, partition=tp.partition, offset=record.offset)
                log.warning("alert_invalid", topic=tp.topic, partition=tp.partition, offset=record.offset,
                            error=str(exc), trace_id=tracing.trace_id_of(traceparent))  # fmt: skip
                await dead_letters.send_raw(
                    record.value or b"", key=record.key, reason=str(exc), source=source
                )
                decoded.invalid += 1
                continue
            decoded.events.append((tp.partition, event))
            if traceparent is not None and isinstance(event, AlertEvent):
                decoded.traces[event.alert_id] = traceparent
        if records:
            decoded.offsets[tp] = records[-1].offset + 1
            decoded.received += len(records)
    return decoded


def partition_of(device_id: str, *, partitions: int) -> int:
    """The ``telemetry.alerts`` partition of a device's alerts: Kafka's default partitioner on the
    key (murmur2, as the Java client and aiokafka, which the processors send with)."""
    return kafka.partition_for(device_id.encode(), partitions)


async def caught_up(consumer: AIOKafkaConsumer) -> bool:
    """Whether every assigned partition has been read up to its high watermark.

    Not while nothing is assigned (starting, or waiting for a killed member's session to
    expire): a tick then would judge incidents this instance does not own yet.
    """
    assignment = consumer.assignment()
    if not assignment:
        return False
    for tp in assignment:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True
