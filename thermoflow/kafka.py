"""Kafka connection helpers on aiokafka: clients built from the shared settings, topic creation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from thermoflow import topics
from thermoflow.aiokafka_fetch import IDLE_FETCH_WAIT
from thermoflow.events import AlertEvent, Reading, encode
from thermoflow.logs import get_logger
from thermoflow.settings import ThermoflowSettings

log = get_logger(__name__)

#: The pipeline's topics and their default partition counts.
DEFAULT_PARTITIONS: Mapping[str, int] = {
    topics.READINGS: 12,
    topics.ALERTS: 6,
    topics.DEADLETTER: 3,
}


def producer(settings: ThermoflowSettings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent, acks=all producer: what at-least-once without reordering needs."""
    options: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 1 << 20,
        "compression_type": None,
    }
    options.update(overrides)
    return AIOKafkaProducer(**settings.kafka_options(), **options)


def group_instance_id(settings: ThermoflowSettings, group_id: str | None) -> str | None:
    """The static member id (KIP-345) of this process in ``group_id``, or None for dynamic membership.

    A static member killed and restarted with the same id within the session timeout gets its
    partitions back at once, without waiting for the broker to expire it (~10 s before). Two live
    processes with one id fence each other, so an id is only derived where it is known unique:
    ``instance_id`` when set (e.g. a Kubernetes pod name), else under `thermoflow run`, which sets
    ``THERMOFLOW_INSTANCE`` per instance: group, host, the supervisor's pid (the parent, the same
    across a child's restarts, different for another `thermoflow run` on the host) and the number.
    A process started on its own keeps dynamic membership.

    The price: a static member does not leave the group when it stops, so a stopped instance's
    partitions wait for its session timeout before another member takes them (scale-down).
    """
    if group_id is None:
        return None
    if settings.instance_id:
        return settings.instance_id
    if settings.instance is None:
        return None
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:100]
    return f"{group_id}-{host}-{os.getppid()}-{settings.instance}"


def consumer(
    settings: ThermoflowSettings,
    *topic_names: str,
    group_id: str | None,
    sparse: bool = False,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A consumer that commits only when told to (after its output is durable).

    Its fetches wait up to ``settings.fetch_wait`` (from the latency budget) for
    ``kafka_fetch_min_bytes``: a fetch that answers with whatever one record is there makes many
    tiny batches, and each batch costs its
    consumer (a COPY, a commit) the same whatever its size. In a group it is a static member
    when :func:`group_instance_id` gives it an id.

    With ``sparse``, for a topic of few records (the alerts: a few a second, and the processors'
    watermarks once a second), a fetch answers at its first record and otherwise waits
    :data:`~thermoflow.aiokafka_fetch.IDLE_FETCH_WAIT`: gathering would wait ``fetch_wait`` for
    bytes that never come, and ask again 13 times a second, mostly for nothing (about 1% of a
    core per consumer).
    """
    options: dict[str, Any] = {
        "group_id": group_id,
        "group_instance_id": group_instance_id(settings, group_id),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 5000,
        "fetch_max_bytes": 64 << 20,
        "max_partition_fetch_bytes": 8 << 20,
        "fetch_min_bytes": 1 if sparse else settings.kafka_fetch_min_bytes,
        "fetch_max_wait_ms": round((IDLE_FETCH_WAIT if sparse else settings.fetch_wait) * 1000),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topic_names, **settings.kafka_options(), **options)


async def produce_events(
    settings: ThermoflowSettings,
    topic: str,
    events: Sequence[Reading | AlertEvent],
    *,
    chunk: int = 10_000,
) -> None:
    """Send events keyed by device id, ``chunk`` futures in flight at a time (filling a topic)."""
    sender = producer(settings, linger_ms=20)
    await sender.start()
    try:
        for start in range(0, len(events), chunk):
            futures = [
                await sender.send(topic, encode(event), key=event.device_id.encode())
                for event in events[start : start + chunk]
            ]
            await asyncio.gather(*futures)
    finally:
        await sender.stop()


async def ensure_topics(
    settings: ThermoflowSettings,
    partitions: Mapping[str, int],
    *,
    timeout: float = 30.0,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:
    """Create the topics that don't exist yet (with their ``configs``); returns the names it created.

    Returns once the broker serves every partition of them: Kafka acknowledges a CreateTopics
    before its metadata reaches the brokers, and a topic described in that gap has no partitions.
    """
    admin = AIOKafkaAdminClient(**settings.kafka_options(), request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=name,
                num_partitions=count,
                replication_factor=1,
                topic_configs=dict((configs or {}).get(name, {})),
            )
            for name, count in partitions.items()
            if name not in existing
        ]
        if not wanted:
            return []
        with contextlib.suppress(TopicAlreadyExistsError):  # another process was quicker: fine
            await admin.create_topics(wanted)
        await _until_served(admin, [t.name for t in wanted], timeout)
        log.info("topics_created", topics=[t.name for t in wanted])
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def _until_served(admin: AIOKafkaAdminClient, names: Iterable[str], timeout: float) -> None:
    """Wait until the broker's metadata has each of ``names`` with a leader for every partition."""
    deadline = asyncio.get_running_loop().time() + timeout
    waiting = set(names)
    while True:
        for described in await admin.describe_topics(sorted(waiting)):
            parts = described.get("partitions") or ()
            if described.get("error_code", 0) == 0 and parts and all(p["leader"] >= 0 for p in parts):
                waiting.discard(described["topic"])
        if not waiting:
            return
        if asyncio.get_running_loop().time() >= deadline:
            raise TimeoutError(f"Kafka does not serve the new topics {sorted(waiting)} within {timeout:g}s")
        await asyncio.sleep(0.05)


async def partition_counts(
    settings: ThermoflowSettings, names: Sequence[str], *, timeout: float = 30.0
) -> dict[str, int]:
    """The partition count of each existing topic among ``names``."""
    admin = AIOKafkaAdminClient(**settings.kafka_options(), request_timeout_ms=int(timeout * 1000))
    try:
        await admin.start()
        described = await admin.describe_topics(list(names))
    finally:
        with contextlib.suppress(Exception):  # a client that never started has nothing to close
            await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described if d.get("partitions")}


async def wait_for_kafka(settings: ThermoflowSettings, *, timeout: float = 60.0) -> None:
    """Block until the cluster answers a metadata request, or raise TimeoutError."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        admin = AIOKafkaAdminClient(**settings.kafka_options(), request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaError, KafkaConnectionError, OSError) as exc:
            last = exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    raise TimeoutError(f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout:.0f}s: {last}")


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record among ``partitions``
    (murmur2, as the Java client and aiokafka do; pure Python, so callers cache it per key).

    >>> partition_for(b"freezer-00001", 6) == partition_for(b"freezer-00001", 6) < 6
    True
    """
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


async def send_batches(
    producer: AIOKafkaProducer,
    topic: str,
    records: Iterable[tuple[int, bytes | None, bytes, Sequence[tuple[str, bytes]] | None]],
) -> list[asyncio.Future[Any]]:
    """Send ``(partition, key, value, headers)`` records as one producer batch per partition (more
    when one fills), in order; the futures of their acks.

    One ``send_batch`` per partition instead of a ``send`` (a future, a record) per record.
    """
    builders: dict[int, Any] = {}
    futures: list[asyncio.Future[Any]] = []
    for partition, key, value, headers in records:
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:  # full
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            builder = builders[partition] = producer.create_batch()
            builder.append(key=key, value=value, timestamp=None, headers=headers)
    for partition, builder in builders.items():
        futures.append(await producer.send_batch(builder, topic, partition=partition))
    return futures
