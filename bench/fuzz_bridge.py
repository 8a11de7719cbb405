"""Fuzz run: ≥100,000 hostile payloads through one real `thermoflow bridge` process.

    .venv/bin/python bench/fuzz_bridge.py [--messages 100000] [--seed 1] [--devices 1000]

MQTT and Kafka from THERMOFLOW_MQTT_URL / THERMOFLOW_KAFKA_BOOTSTRAP (default: the local stack);
fresh Kafka topics, MQTT topics and client id per run. The payloads are the catalogue of
``tests/hostile.py`` (each case once, the 10 MB ones included) and then fuzzed ones (valid
readings in every shape, catalogue cases, mutations of both, random JSON trees, random bytes),
published at QoS 1 on one connection, then a valid sentinel.

The codec decides, before the run, what each payload must become (``tests.support.hostile.expected_outcome``):
the run then checks that the bridge produced exactly that many readings and exactly that many
dead letters of each reason class, acked every message, and never stalled or crashed.

Printed: the count; stalls (no record landed for ``--stall`` seconds while some were due);
crashes (the bridge exited before SIGTERM, exited non-zero, or logged an exception); the outcome
table, expected beside got; the bridge process's CPU-seconds, readings per CPU-second and
messages per CPU-second. Exits non-zero when anything did not match.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from paho.mqtt import client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench.common import cpu_seconds  # noqa: E402
from tests.support.hostile import catalogue, expected_outcome, fuzz_payloads, reason_class  # noqa: E402
from thermoflow.events import parse_dead_letter_headers  # noqa: E402
from thermoflow.ingest.settings import IngestSettings  # noqa: E402
from thermoflow.kafka import ensure_topics  # noqa: E402

READINGS = "readings"
_COUNTERS = ("received", "acked", "dead_lettered", "produced")


def build(args: argparse.Namespace, prefix: str) -> tuple[list[tuple[str, bytes]], Counter[str]]:
    """The messages and what they must become: ``readings`` and a count per dead-letter class."""
    now = time.time()
    cases = catalogue(now)
    rng = random.Random(args.seed)
    fuzzed = fuzz_payloads(rng, now, cases)
    messages: list[tuple[str, bytes]] = []
    expected: Counter[str] = Counter()
    left_out = 0
    sources = [(case.device, case.payload) for case in cases]
    while len(messages) < args.messages:
        device, payload = sources.pop(0) if sources else (None, next(fuzzed))
        device = device or f"fz{len(messages) % args.devices:04d}"
        outcome = expected_outcome(payload, device=device, now=now)
        if outcome is None:  # next to an edge of the ts window: its outcome depends on the second
            left_out += 1
            continue
        messages.append((f"{prefix}/{device}/temperature", payload))
        expected[READINGS if isinstance(outcome, int) else outcome] += (
            outcome if isinstance(outcome, int) else 1
        )
    if left_out:
        print(f"({left_out} fuzzed payloads left out: their ts lay within minutes of the window's edge)")
    return messages, expected


def publish(url: str, messages: list[tuple[str, bytes]], acked: list[int]) -> None:
    """QoS 1 on one paho connection, in order; returns when the broker acked every message."""
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fuzz-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *_: acked.__setitem__(0, acked[0] + 1)
    client.connect(host, int(port))
    client.loop_start()
    try:
        for start in range(0, len(messages), 10_000):  # paho holds at most 65,535 packet ids
            infos = [
                client.publish(topic, payload, qos=1) for topic, payload in messages[start : start + 10_000]
            ]
            for info in infos:
                info.wait_for_publish(600)
    finally:
        client.disconnect()
        client.loop_stop()


async def landed(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> int:
    return sum((await consumer.end_offsets(tps)).values())


async def dead_letter_classes(bootstrap: str, topic: str, count: int) -> Counter[str]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    classes: Counter[str] = Counter()
    try:
        while sum(classes.values()) < count:
            batches = await consumer.getmany(timeout_ms=2000, max_records=10_000)
            if not batches:
                break
            for records in batches.values():
                for record in records:
                    classes[reason_class(parse_dead_letter_headers(record.headers).error)] += 1
    finally:
        await consumer.stop()
    return classes


def final_counters(log: Path) -> dict[str, int]:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if '"bridge_stopped"' in line:
            return {k: int(v) for k, v in json.loads(line)["counters"].items()}
    return {}


async def run(args: argparse.Namespace) -> int:
    tag = uuid.uuid4().hex[:8]
    prefix = f"fuzz-{tag}"
    settings = IngestSettings()
    readings_topic, deadletter_topic = f"fuzz-readings-{tag}", f"fuzz-deadletter-{tag}"
    await ensure_topics(settings, {readings_topic: 12, deadletter_topic: 3})
    messages, expected = build(args, prefix)
    messages.append((f"{prefix}/sentinel/temperature", b'{"value": -18.5}'))
    expected[READINGS] += 1
    dead_due = sum(n for name, n in expected.items() if name != READINGS)
    due = expected[READINGS] + dead_due
    print(f"{len(messages):,} messages ({len(messages) - 1:,} fuzzed and catalogue + 1 sentinel),"
          f" {sum(len(p) for _, p in messages) / 1e6:,.1f} MB; due: {expected[READINGS]:,} readings,"
          f" {dead_due:,} dead letters", flush=True)  # fmt: skip

    env = {
        **os.environ,
        "THERMOFLOW_READINGS_TOPIC": readings_topic,
        "THERMOFLOW_DEADLETTER_TOPIC": deadletter_topic,
        "THERMOFLOW_MQTT_TOPICS": f"{prefix}/+/temperature",
        "THERMOFLOW_TOPIC_TEMPLATE": f"{prefix}/{{device_id}}/{{metric}}",
        "THERMOFLOW_MQTT_CLIENT_ID": f"fuzz-bridge-{tag}",
        "THERMOFLOW_MQTT_SESSION_EXPIRY": "120",
        "THERMOFLOW_LOG_LEVEL": "INFO",
        "THERMOFLOW_HTTP_PORT": "0",  # no /metrics: the default port may be another run's
    }
    log = Path(tempfile.mkdtemp(prefix="fuzz-bridge-")) / "bridge.log"
    with log.open("wb") as out:
        bridge = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "thermoflow", "bridge", env=env, cwd=ROOT, stdout=out, stderr=out
        )
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    tps = [TopicPartition(readings_topic, p) for p in range(12)]
    tps += [TopicPartition(deadletter_topic, p) for p in range(3)]
    stalls, crashed = 0, False
    try:
        deadline = time.monotonic() + 60
        while '"mqtt_subscribed"' not in log.read_text(errors="replace"):
            if bridge.returncode is not None or time.monotonic() > deadline:
                raise SystemExit(f"the bridge did not subscribe within 60 s; see {log}")
            await asyncio.sleep(0.1)
        cpu_before, started = cpu_seconds(bridge.pid), time.monotonic()
        acked = [0]
        publisher = threading.Thread(target=publish, args=(settings.mqtt_url, messages, acked), daemon=True)
        publisher.start()
        count, moved = 0, time.monotonic()
        while count < due:
            await asyncio.sleep(0.5)
            now_count = await landed(consumer, tps)
            if now_count > count:
                count, moved = now_count, time.monotonic()
            elif time.monotonic() - moved > args.stall:
                stalls += 1
                print(f"STALL: {count:,} of {due:,} records landed, none for {args.stall:.0f} s", flush=True)
                break
            if bridge.returncode is not None:
                crashed = True
                break
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(bridge.pid) - cpu_before if bridge.returncode is None else float("nan")
        await asyncio.to_thread(publisher.join, 60)
    finally:
        await consumer.stop()
        if bridge.returncode is None:
            bridge.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(bridge.wait(), 60)
        except TimeoutError:
            bridge.kill()
            code = await bridge.wait()
            crashed = True
    text = log.read_text(errors="replace")
    exceptions = (
        text.count("Traceback") + text.count("Exception in callback") + text.count('"translate_failed"')
    )
    crashes = int(crashed or code != 0) + exceptions
    counters = final_counters(log)

    got = await dead_letter_classes(settings.kafka_bootstrap, deadletter_topic, dead_due)
    got[READINGS] = await landed_readings(settings.kafka_bootstrap, readings_topic)
    print(f"\nmessages: {len(messages):,}   stalls: {stalls}   crashes: {crashes}"
          f"   bridge exit code: {code}   bridge log: {log}")  # fmt: skip
    print("bridge counters:", ", ".join(f"{name} {counters.get(name, 0):,}" for name in _COUNTERS))
    print(f"\n{'outcome':<48}{'expected':>10}{'got':>10}")
    rows = [READINGS, *sorted((set(expected) | set(got)) - {READINGS}, key=lambda k: -expected[k])]
    for name in rows:
        label = name if name == READINGS else f"dead letter: {name}"
        mark = "" if expected[name] == got[name] else "   <-- MISMATCH"
        print(f"{label:<48}{expected[name]:>10,}{got[name]:>10,}{mark}")
    print(f"{'dead letters, all':<48}{dead_due:>10,}{sum(n for k, n in got.items() if k != READINGS):>10,}")
    print(f"\nbridge CPU: {cpu:.1f} s over {elapsed:.1f} s wall;"
          f" {got[READINGS] / cpu:,.0f} readings per CPU-second;"
          f" {len(messages) / cpu:,.0f} messages per CPU-second", flush=True)  # fmt: skip
    ok = (
        stalls == 0
        and crashes == 0
        and got == expected
        and counters.get("acked") == counters.get("received") == len(messages)
    )
    print("RESULT:", "every message ended as its readings or its dead letter" if ok else "FAILED")
    return 0 if ok else 1


async def landed_readings(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return await landed(consumer, [TopicPartition(topic, p) for p in range(12)])
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument(
        "--stall", type=float, default=30.0, help="seconds without progress that make a stall"
    )
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
