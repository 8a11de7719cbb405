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
