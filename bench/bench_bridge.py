"""Bridge benchmark: readings/s from MQTT into Kafka through one `thermoflow bridge` process.

    .venv/bin/python bench/bench_bridge.py [--messages 200000] [--devices 1000] [--connections 4]
                                           [--previous REV]
    .venv/bin/python bench/bench_bridge.py --steady 5000,20000 [--seconds 20] [--previous REV]
                                           [--profile DIR --py-spy PATH]

MQTT, Kafka from THERMOFLOW_MQTT_URL / THERMOFLOW_KAFKA_BOOTSTRAP (default: the local stack).
Each run uses fresh Kafka topics (12 partitions), MQTT topics and client ids. In the same run:

1. `thermoflow bridge` (a subprocess, MQTT 5, ack after Kafka) with the load published live at
   QoS 1, then at QoS 0, by a publisher process of its own (raw-socket MQTT connections from
   `thermoflow.simulator.connection`, several of them on one event loop);
2. the baseline, a naive bridge (this file, `naive` mode, a subprocess): paho's threaded loop with
   automatic acks, whose `on_message` hands each message to `producer.send` on an asyncio loop;
3. with ``--previous REV`` (a git revision, e.g. the commit before the bridge's input validation),
   the same QoS 1 case on that revision's code (``git archive`` into a temporary folder, run from
   there), for before/after in one run;
4. the ratios.

With ``--steady RATES`` only: the bridge's CPU per reading at each fixed rate (QoS 1, paced in
10 ms steps), for this tree and for ``--previous``'s in the same run: the figure that counts for a
fleet publishing steadily, where per-wakeup and per-request costs weigh most. With ``--profile
DIR``, py-spy samples each bridge at 200 Hz while it is measured (only while it holds the GIL) and
leaves a raw profile per case in DIR.

Throughput = readings landed in Kafka per second: the readings topic's end offsets, polled every
0.1 s, from the first record until all of them are there. CPU = the bridge process's user + system
time (``/proc/<pid>/stat``) from just before publishing until the last reading landed: printed as
CPU-seconds per 1,000 readings and readings per CPU-second, the figure a peer is judged by.
The payloads' ``ts`` start an hour before the run, inside the bridge's accepted window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `bench` is a package of the repository

from bench.common import checkout, cpu_seconds  # noqa: E402

T0 = float(int(time.time()) - 3600)  # the first payload's ts: an hour ago


def payload(i: int, devices: int, t0: float = T0) -> tuple[str, bytes]:
    device = f"freezer-{i % devices:04d}"
    body = b'{"value":%r,"ts":%r,"seq":%d,"unit":"C"}' % (
        -18.0 + (i % 50) / 10,
        t0 + i / 1000,
        i,
    )
    return device, body


class Result(NamedTuple):
    rate: float  # readings/s
    cpu: float  # CPU-seconds of the bridge process while the readings came
    readings: int

    @property
    def per_cpu_second(self) -> float:
        return self.readings / self.cpu if self.cpu else 0.0


# -- the publisher (a subprocess) ---------------------------------------------------------------


async def publish(
    *, prefix: str, messages: int, devices: int, qos: int, connections: int, rate: float = 0.0
) -> None:
    """Publish ``messages``: as fast as the broker takes them, or at ``rate`` messages/s (10 ms steps)."""
    from thermoflow.ingest.settings import IngestSettings
    from thermoflow.simulator import packets
    from thermoflow.simulator.connection import Connection, Endpoint, PublishStats

    settings = IngestSettings()
    stats = PublishStats()
    endpoint = Endpoint(settings.mqtt_host, settings.mqtt_port)
    tag = uuid.uuid4().hex[:6]
    pool = [
        Connection(client_id=f"bench-pub-{tag}-{n}", endpoint=endpoint, qos=qos, window=1000, stats=stats)
        for n in range(connections)
    ]
    for connection in pool:
        await connection.connect()
    fields = [packets.topic_field(f"{prefix}/freezer-{d:04d}/temperature".encode()) for d in range(devices)]
    chunk = max(1, int(rate / 100)) if rate else 2000
    started = time.perf_counter()
    for start in range(0, messages, chunk):
        if rate:  # a steady fleet: each step at its time
            await asyncio.sleep(max(0.0, started + start / rate - time.perf_counter()))
        index = range(start, min(start + chunk, messages))
        connection = pool[(start // chunk) % connections]
        connection.publish([fields[i % devices] for i in index], [payload(i, devices)[1] for i in index])
        # Keep the queues short, so the sockets, not Python lists, hold the backlog.
        while sum(c.queued for c in pool) > 20_000:  # noqa: ASYNC110 - polling the pool's queues
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)
    target = messages if qos else 0
    while (stats.acked if qos else 0) < target or any(c.queued or c.buffered for c in pool):  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    for connection in pool:
        await connection.close()
    print(json.dumps({"published": messages, "seconds": elapsed}), flush=True)


# -- the naive baseline bridge (a subprocess) ---------------------------------------------------


def naive_bridge(*, filters: str, readings_topic: str) -> None:
    """paho's own thread with automatic acks; on_message -> producer.send per message."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from thermoflow import kafka
    from thermoflow.events import encode
    from thermoflow.ingest.codecs import decode_payload
    from thermoflow.ingest.mapping import TopicTemplate
    from thermoflow.ingest.settings import IngestSettings

    settings = IngestSettings()
    template = TopicTemplate(settings.topic_template)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start_producer() -> Any:
        producer = kafka.producer(settings)
        await producer.start()
        return producer

    producer = asyncio.run_coroutine_threadsafe(start_producer(), loop).result(60)

    def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        topic = message.topic
        for reading in decode_payload(
            bytes(message.payload), fields=template.match(topic), received_at=time.time()
        ):
            asyncio.run_coroutine_threadsafe(
                producer.send(readings_topic, encode(reading), key=reading.device_id.encode()), loop
            )

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-naive-{uuid.uuid4().hex[:6]}")
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in filters.split(",")])
    client.connect(settings.mqtt_host, settings.mqtt_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.loop_start()
    print("ready", flush=True)
    stop.wait()
    client.disconnect()
    client.loop_stop()
    asyncio.run_coroutine_threadsafe(producer.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)


# -- the measurement ----------------------------------------------------------------------------


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(offsets.values())
    finally:
        await consumer.stop()


async def measure(*, bootstrap: str, topic: str, partitions: int, expected: int, timeout: float) -> float:
    """Readings/s landing in ``topic``: from the first record to the last (or the timeout)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    first: tuple[float, int] | None = None
    last = (time.perf_counter(), 0)
    deadline = time.perf_counter() + timeout
    try:
        while time.perf_counter() < deadline:
            landed = sum((await consumer.end_offsets(tps)).values())
            now = time.perf_counter()
            if landed and first is None:
                first = (now, landed)
            last = (now, landed)
            if landed >= expected:
                break
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()
    if first is None or last[0] <= first[0]:
        return 0.0
    if last[1] < expected:
        print(f"    only {last[1]} of {expected} readings arrived within {timeout:.0f}s", flush=True)
    return (last[1] - first[1]) / (last[0] - first[0])


async def run_case(
    name: str,
    *,
    args: argparse.Namespace,
    qos: int,
    naive: bool = False,
    tree: Path = ROOT,
    rate: float = 0.0,
) -> Result:
    """One bridge (``tree``'s code, or the naive one) under one publisher run (at ``rate``/s if given)."""
    messages = int(rate * args.seconds) if rate else args.messages
    from thermoflow.ingest.settings import IngestSettings
    from thermoflow.kafka import ensure_topics

    tag = uuid.uuid4().hex[:8]
    prefix = f"bench-{tag}"
    readings_topic, deadletter_topic = f"bench-readings-{tag}", f"bench-deadletter-{tag}"
    settings = IngestSettings()
    await ensure_topics(settings, {readings_topic: 12, deadletter_topic: 1})
    env = {
        **os.environ,
        "THERMOFLOW_READINGS_TOPIC": readings_topic,
        "THERMOFLOW_DEADLETTER_TOPIC": deadletter_topic,
        "THERMOFLOW_MQTT_TOPICS": f"{prefix}/+/temperature",
        "THERMOFLOW_TOPIC_TEMPLATE": f"{prefix}/{{device_id}}/{{metric}}",
        "THERMOFLOW_MQTT_CLIENT_ID": f"bench-bridge-{tag}",
        "THERMOFLOW_MQTT_SESSION_EXPIRY": "60",
        "THERMOFLOW_LOG_LEVEL": "INFO",  # its `mqtt_subscribed` line starts the publisher
        "THERMOFLOW_HTTP_PORT": "0",  # no /metrics: the default port may be another run's
    }
    if naive:
        command = [sys.executable, __file__, "naive", f"{prefix}/+/temperature", readings_topic]
    else:
        command = [sys.executable, "-m", "thermoflow", "bridge"]
        if tree != ROOT:  # that revision's packages first on the path
            env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    bridge = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=tree, stdout=asyncio.subprocess.PIPE,
        stderr=None if naive else asyncio.subprocess.STDOUT,
    )  # fmt: skip
    drain: asyncio.Task[None] | None = None
    profiler: asyncio.subprocess.Process | None = None
    try:
        assert bridge.stdout is not None
        if naive:
            await bridge.stdout.readline()
        else:
            # Publishing before the bridge subscribed would lose messages (no session yet), and its
            # start (imports, connects) would count as CPU per reading: wait for its subscription.
            await asyncio.wait_for(_until_line(bridge.stdout, b"mqtt_subscribed"), args.timeout)
            drain = asyncio.create_task(_until_line(bridge.stdout, b"\0never"))
            if args.profile:
                profiler = await _profile(bridge.pid, args, name=name)
        cpu_before = cpu_seconds(bridge.pid)
        publisher = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "publish", prefix, str(messages), str(args.devices), str(qos),
            str(args.connections), str(rate), env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        rate = await measure(
            bootstrap=settings.kafka_bootstrap,
            topic=readings_topic,
            partitions=12,
            expected=messages,
            timeout=args.timeout,
        )
        cpu = cpu_seconds(bridge.pid) - cpu_before
        out, _ = await asyncio.wait_for(publisher.communicate(), args.timeout)
        published = json.loads(out.decode().strip().splitlines()[-1])
        landed = await end_offsets(settings.kafka_bootstrap, readings_topic, 12)
        result = Result(rate, cpu, landed)
        print(
            f"{name:<48} {rate:>9,.0f} readings/s  {1000 * cpu / max(landed, 1):>7.4f} CPU-s/1k"
            f"  {result.per_cpu_second:>8,.0f} readings/CPU-s   ({landed:,} of {messages:,} landed;"
            f" publisher {messages / published['seconds']:,.0f} msg/s)",
            flush=True,
        )
        return result
    finally:
        if profiler is not None:
            await profiler.wait()
        bridge.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(bridge.wait(), 60)
        except TimeoutError:
            bridge.kill()
            await bridge.wait()
        if drain is not None:
            drain.cancel()


async def _until_line(stream: asyncio.StreamReader, marker: bytes) -> None:
    """Read ``stream`` until a line holding ``marker`` (or its end), dropping what comes before."""
    while line := await stream.readline():
        if marker in line:
            return


async def _profile(pid: int, args: argparse.Namespace, *, name: str) -> asyncio.subprocess.Process:
    """py-spy the bridge at 200 Hz while it holds the GIL (``--profile DIR``: a raw profile per case).

    Only samples holding the GIL: a sample in a system call (a write that wakes Kafka, then a wait
    for the core) is wall time on a busy machine, not the bridge's CPU.
    """
    out = Path(args.profile) / f"{''.join(c if c.isalnum() else '-' for c in name)}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        args.py_spy, "record", "-p", str(pid), "-r", "200", "-f", "raw", "--nonblocking", "--gil",
        "-d", str(max(1, int(args.seconds))), "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "inf"


async def steady(args: argparse.Namespace) -> None:
    """CPU per reading at fixed rates, this tree's bridge beside ``--previous``'s, in one run.

    At a steady rate the per-wakeup, per-request and per-batch costs weigh most (a fleet's
    normal day), unlike the bulk runs above, where batches are as large as they get.
    """
    tree = checkout(args.previous, root=ROOT) if args.previous else None
    try:
        for rate in args.steady:
            now = await run_case(f"bridge, QoS 1, steady {rate:,.0f}/s", args=args, qos=1, rate=rate)
            if tree is not None:
                before = await run_case(
                    f"bridge at {args.previous[:12]}, steady {rate:,.0f}/s", args=args, qos=1, tree=tree,
                    rate=rate,
                )  # fmt: skip
                print(f"steady {rate:,.0f}/s: {1e3 * now.cpu / max(now.readings, 1):.4f} CPU-s/1k readings"
                      f" (previous {1e3 * before.cpu / max(before.readings, 1):.4f}),"
                      f" {ratio(before.cpu / max(before.readings, 1), now.cpu / max(now.readings, 1))}"
                      " less CPU per reading", flush=True)  # fmt: skip
    finally:
        if tree is not None:
            shutil.rmtree(tree, ignore_errors=True)


async def main(args: argparse.Namespace) -> None:
    if args.steady:
        await steady(args)
        return
    print(
        f"{args.messages:,} messages from {args.devices:,} devices, {args.connections} publisher connections"
    )
    qos1 = await run_case("bridge, QoS 1, ack after Kafka", args=args, qos=1)
    before = None
    if args.previous:
        tree = checkout(args.previous, root=ROOT)
        try:
            before = await run_case(
                f"bridge at {args.previous[:12]}, QoS 1 (previous code)", args=args, qos=1, tree=tree
            )
        finally:
            shutil.rmtree(tree, ignore_errors=True)
    qos0 = await run_case("bridge, QoS 0", args=args, qos=0)
    naive1 = await run_case("baseline: naive bridge, QoS 1, auto-ack", args=args, qos=1, naive=True)
    if before is not None:
        print(f"ratio QoS 1 bridge / previous code: {ratio(qos1.rate, before.rate)} readings/s,"
              f" {ratio(qos1.per_cpu_second, before.per_cpu_second)} readings per CPU-second")  # fmt: skip
    print(f"ratio QoS 1 bridge / naive bridge: {ratio(qos1.rate, naive1.rate)}")
    print(f"ratio QoS 0 bridge / naive bridge: {ratio(qos0.rate, naive1.rate)}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        prefix, messages, devices, qos, connections, rate = sys.argv[2:8]
        asyncio.run(
            publish(prefix=prefix, messages=int(messages), devices=int(devices), qos=int(qos),
                    connections=int(connections), rate=float(rate))
        )  # fmt: skip
    elif len(sys.argv) > 1 and sys.argv[1] == "naive":
        naive_bridge(filters=sys.argv[2], readings_topic=sys.argv[3])
    else:
        parser = argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        parser.add_argument("--messages", type=int, default=200_000)
        parser.add_argument("--devices", type=int, default=1000)
        parser.add_argument("--connections", type=int, default=4)
        parser.add_argument("--timeout", type=float, default=120.0)
        parser.add_argument("--previous", help="a git revision whose bridge runs the QoS 1 case too")
        parser.add_argument(
            "--steady",
            type=lambda text: [float(rate) for rate in text.split(",")],
            help="only the steady-rate figure: CPU per reading at these rates/s, e.g. 5000,20000",
        )
        parser.add_argument("--seconds", type=float, default=20.0, help="seconds of each steady rate")
        parser.add_argument("--profile", help="a folder: py-spy each bridge (200 Hz) while it is measured")
        parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy's path")
        asyncio.run(main(parser.parse_args()))
