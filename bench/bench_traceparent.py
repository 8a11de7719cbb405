"""What a traceparent per MQTT message costs the bridge's hot path, without a broker.

    .venv/bin/python bench/bench_traceparent.py [--messages 200000] [--rounds 5]

The bridge's own benchmark (``bench/bench_bridge.py --previous REV``) measures the whole
process, but on a shared machine its CPU-seconds per 1,000 readings vary by 15% between two
runs of the same code, more than the header costs. This one times, in one process and one
run, the two per-message steps the header touches, with and without it:

1. the translation of a message into its Kafka record (:class:`~thermoflow.ingest.records.Translator`),
   plus, when traced, the new traceparent (:class:`~thermoflow.tracing.TraceSource`);
2. the record's encoding into a Kafka batch (aiokafka's ``DefaultRecordBatchBuilder``, as the
   bridge's delivery does), with two headers or three.

It prints the best round of each, in µs per message and CPU-seconds per 1,000 readings (one
reading per message, as in ``bench_bridge.py``), and the difference.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from thermoflow.ingest.mapping import TopicTemplate
from thermoflow.ingest.records import OutRecord, Translator
from thermoflow.tracing import TraceSource


def best_per_message(work: Callable[[], None], *, messages: int, rounds: int) -> float:
    """The fastest round's CPU seconds per message."""
    work()  # warm the topic cache
    times = []
    for _ in range(rounds):
        started = time.process_time()
        work()
        times.append((time.process_time() - started) / messages)
    return min(times)


def main(args: argparse.Namespace) -> None:
    now = time.time()
    translator = Translator(
        TopicTemplate("sensors/{device_id}/{metric}"), readings_topic="r", deadletter_topic="d"
    )
    traces = TraceSource(ratio=0.001)
    messages = [
        (f"sensors/freezer-{i % 1000:04d}/temperature",
         b'{"value":%r,"ts":%r,"seq":%d,"unit":"C"}' % (-18.0 + (i % 50) / 10, now - 10 + i / 1e6, i))
        for i in range(args.messages)
    ]  # fmt: skip

    def plain() -> None:
        for topic, payload in messages:
            translator.translate(topic, payload, received_at=now)

    def traced() -> None:
        for topic, payload in messages:
            translator.translate(topic, payload, received_at=now, traceparent=traces.new())

    def encode(records: Sequence[OutRecord]) -> Callable[[], None]:
        def run() -> None:
            builder = DefaultRecordBatchBuilder(
                magic=2, compression_type=0, is_transactional=False, producer_id=-1, producer_epoch=-1,
                base_sequence=-1, batch_size=1 << 30,
            )  # fmt: skip
            for offset, record in enumerate(records):
                builder.append(
                    offset, timestamp=None, key=record.key, value=record.value, headers=record.headers
                )

        return run

    plain_records = [translator.translate(t, p, received_at=now).records[0] for t, p in messages]
    traced_records = [translator.translate(t, p, received_at=now, traceparent=traces.new()).records[0]
                      for t, p in messages]  # fmt: skip
    n, rounds = args.messages, args.rounds
    figures = {
        "translate": best_per_message(plain, messages=n, rounds=rounds),
        "translate + traceparent": best_per_message(traced, messages=n, rounds=rounds),
        "encode (2 headers)": best_per_message(encode(plain_records), messages=n, rounds=rounds),
        "encode (3 headers)": best_per_message(encode(traced_records), messages=n, rounds=rounds),
    }
    print(f"{n:,} messages, best of {rounds} rounds")
    for name, seconds in figures.items():
        print(f"{name:<26} {seconds * 1e6:6.2f} µs/message  {seconds * 1e3:.5f} CPU-s/1k readings")
    before = figures["translate"] + figures["encode (2 headers)"]
    after = figures["translate + traceparent"] + figures["encode (3 headers)"]
    print(f"traceparent costs {(after - before) * 1e6:.2f} µs/message = {(after - before) * 1e3:.5f} CPU-s"
          f" per 1,000 readings ({after / before:.2f}x these two steps)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    main(parser.parse_args())
