"""A faust transport that hands a stream one event per fetched partition chunk, not one per record.

Why: faust's fetcher delivers every record on its own (a ``Message``, an ``Event``, a
``wait_first`` with two tasks, the stream's processors), about 60-80 µs of Python per record,
which caps a worker near 13,000 records/s however the agent batches afterwards. The
threshold check needs hundreds of thousands per second, so for the topics named in
``batch_topics`` this consumer passes on each partition's fetched records as *one* message:
its value is the list of aiokafka ``ConsumerRecord``s, its offset the chunk's last offset.

At-least-once stays faust's own mechanism: before delivering a chunk the offsets below its
last one are registered as a *gap* (faust's bookkeeping for offsets it will not deliver, as
for compacted topics). faust only commits a gap once an offset above it is acked, and that
ack is the chunk's message, acked by ``stream.take_events`` after the agent has sent the
chunk's output. Rebalances behave as in faust: a chunk of a revoked partition is dropped
(its offsets were not committed) and re-read by the new owner.

Everything else (group membership, assignment, commits, the producer, the worker's
lifecycle and signals) is faust's own. Topics not named in ``batch_topics`` are delivered
record by record as usual.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import faust
from faust.serializers import codecs
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import TP, ConsumerMessage

#: The value serializer of a batched topic: the value is already a list of records.
BATCH_SERIALIZER = "thermoflow-chunk"


class _Passthrough(codecs.Codec):
    def _loads(self, s: Any) -> Any:
        return s

    def _dumps(self, s: Any) -> Any:
        return s


codecs.register(BATCH_SERIALIZER, _Passthrough())


class BatchConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, delivering one message per partition chunk for ``batch_topics``."""

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised end to end
        batch_topics: frozenset[str] = getattr(self.app, "batch_topics", frozenset())
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active_partitions = await self._wait_next_records(1.0)
                await self.sleep(0)
                if records is None or self.should_stop or not self.flow_active:
                    continue
                generation_id = self.app.consumer_generation_id
                for tp, chunk in records.items():
                    if not chunk:
                        continue
                    if not self.flow_active or self.app.consumer_generation_id != generation_id:
                        break  # a rebalance began: what is left is re-read from the committed offsets
                    if not (
                        active_partitions is None
                        or tp in active_partitions
                        or tp in self._buffered_partitions
                    ):
                        continue
                    r_offset = read_offset[
                        tp
                    ]  # the last offset delivered, or (after a seek) the next to read
                    if r_offset is not None and chunk[0].offset < r_offset:
                        chunk = [record for record in chunk if record.offset >= r_offset]
                        if not chunk:
                            continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if tp.topic in batch_topics:
                        last = chunk[-1].offset
                        start = chunk[0].offset if r_offset is None else min(chunk[0].offset, r_offset + 1)
                        # start..last-1 count as done only once `last` is acked, after the output is sent.
                        if last > start and acks_enabled_for(tp.topic):
                            await self._add_gap(tp, start, last - 1)
                        await self.wait_first(
                            callback(self._chunk_message(tp, chunk)), self.suspend_flow.wait()
                        )
                        read_offset[tp] = last
                    else:
                        for record in chunk:
                            offset = record.offset
                            r_offset = read_offset[tp]
                            if r_offset is not None and offset > r_offset + 1 and acks_enabled_for(tp.topic):
                                await self._add_gap(tp, r_offset + 1, offset - 1)
                            await self.wait_first(
                                callback(self._to_message(tp, record)), self.suspend_flow.wait()
                            )
                            read_offset[tp] = offset
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise

    def _chunk_message(self, tp: TP, chunk: list[Any]) -> ConsumerMessage:
        last = chunk[-1]
        return ConsumerMessage(
            tp.topic,
            tp.partition,
            last.offset,
            last.timestamp / 1000.0 if last.timestamp is not None else 0.0,
            last.timestamp_type,
            None,
            None,
            chunk,  # type: ignore[arg-type]  # the value of a chunk message is its records
            None,
            0,
            sum(record.serialized_value_size for record in chunk),
            tp,
            generation_id=self.app.consumer_generation_id,
        )

    def _new_consumer_thread(self) -> _BatchConsumerThread:
        return _BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, with the app's fetch wait (faust fixes fetch_max_wait_ms at 1500 ms
    and leaves fetch_min_bytes at 1: a fetch per record or two at a moderate rate)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher: the consumer is not started yet.
        consumer._fetch_min_bytes = getattr(self.app, "fetch_min_bytes", 1)
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", 1500)
        return consumer


class BatchTransport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[Any]] = BatchConsumer


class BatchingApp(faust.App):
    """A faust app whose consumer delivers partition chunks for the topics in ``batch_topics``."""

    batch_topics: frozenset[str] = frozenset()
    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 1500

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)
