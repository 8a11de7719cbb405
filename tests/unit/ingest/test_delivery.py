"""The bridge's Kafka delivery: what Kafka acked reaches the ack line in as few calls as it can.

No services: the batches' futures are plain asyncio futures, resolved as aiokafka resolves them
when a produce response arrives (every partition of the response in one go).
"""

from __future__ import annotations

import asyncio
from typing import Any

from thermoflow.ingest.acks import Held
from thermoflow.ingest.delivery import Group, KafkaDelivery, Sent
from thermoflow.ingest.records import OutRecord
from thermoflow.kafka import partition_for
from thermoflow.metrics import Metrics
from thermoflow.watchdog import Watchdog


def group(partition: int) -> Group:
    record = OutRecord("readings", b"f-%d" % partition, b"{}", [])
    return Group([record], [Held(partition, 1, 0.0, records=1)])


def delivery(calls: list[list[int]]) -> KafkaDelivery:
    def on_delivered(groups: list[Group]) -> None:
        calls.append([g.owners[0].mid for g in groups])

    producer: Any = None  # never asked: nothing fails
    watchdog = Watchdog(component="bridge", stall_after=0)
    return KafkaDelivery(producer, on_delivered, Metrics("bridge"), watchdog)


async def test_one_responses_batches_are_delivered_in_one_call_so_one_puback_write() -> None:
    calls: list[list[int]] = []
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(12)]
    sent: Sent = [(group(p), future) for p, future in enumerate(futures)]
    task = asyncio.create_task(delivery(calls).deliver(sent))
    await asyncio.sleep(0)
    for future in futures:  # one produce response: every partition's future at once
        future.set_result(None)
    await asyncio.wait_for(task, 1.0)
    assert calls == [list(range(12))]


async def test_what_kafka_acked_first_is_not_held_back_by_a_later_response() -> None:
    calls: list[list[int]] = []
    loop = asyncio.get_running_loop()
    early, late = loop.create_future(), loop.create_future()
    early.set_result(None)
    task = asyncio.create_task(delivery(calls).deliver([(group(0), early), (group(1), late)]))
    await asyncio.sleep(0.01)
    assert calls == [[0]]  # delivered (and acked) while the second batch still waits
    late.set_result(None)
    await asyncio.wait_for(task, 1.0)
    assert calls == [[0], [1]]


async def test_records_are_grouped_by_their_keys_partition_in_order_without_dropped_messages() -> None:
    """Each keyed record goes to the default partitioner's partition; a keyless one round-robin."""

    class Producer:
        async def partitions_for(self, topic: str) -> set[int]:
            return set(range(12 if topic == "readings" else 3))

    producer: Any = Producer()
    watchdog = Watchdog(component="bridge", stall_after=0)
    kafka_delivery = KafkaDelivery(producer, lambda groups: None, Metrics("bridge"), watchdog)
    outbox = []
    for i in range(300):
        topic, key = ("deadletter", None) if i % 50 == 7 else ("readings", b"freezer-%04d" % (i % 40))
        owner = Held(i, 1, 0.0, records=1, dropped=i % 100 == 3)
        outbox.append((OutRecord(topic, key, b"%d" % i, []), owner))
    for _ in range(2):  # the second time, every key's partition is known
        groups = await kafka_delivery.group(outbox)
        seen = []
        for (topic, partition), group in groups.items():
            assert [o.mid for o in group.owners] == sorted(o.mid for o in group.owners)  # in order
            for record, owner in zip(group.records, group.owners, strict=True):
                assert record.topic == topic and record.value == b"%d" % owner.mid
                if record.key is not None:
                    assert partition == partition_for(record.key, 12)
            seen += [o.mid for o in group.owners]
        assert sorted(seen) == [i for i in range(300) if i % 100 != 3]
        assert len({p for t, p in groups if t == "deadletter"}) == 3  # six keyless records, round robin
