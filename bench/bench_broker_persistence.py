"""Broker persistence benchmark: what saving Mosquitto's database more often costs, and saves.

    .venv/bin/python bench/bench_broker_persistence.py [--seconds 10] [--rate 0] [--only LABEL,...]

Mosquitto (2.0) keeps queued QoS 1 messages in memory and writes its whole database to disk
on an autosave and on a clean shutdown, never per message. A `kill -9` loses what it acked
since the last save. For each candidate configuration, in the same run:

1. a private Mosquitto (the stack's config, with that candidate's ``autosave_*`` lines);
2. a persistent-session QoS 1 subscriber subscribes and goes away: messages queue in the broker,
   as they do while the bridge waits on a Kafka that is down;
3. one raw-socket QoS 1 publisher (``thermoflow.simulator.connection``, window 1000) publishes for
   ``--seconds`` (as fast as it can, or at ``--rate`` messages/s); the broker's CPU time is
   read from /proc over that span;
4. `kill -9` of the broker while the publisher is still publishing, a restart, the subscriber
   back: how many of the acked messages survive.

It prints per candidate: acked messages/s, broker CPU-ms per 1,000 messages, acked and lost
messages, and the loss in seconds of traffic; and each figure's ratio to the current config
(``autosave_interval 10``), measured in the same run. No services needed but Mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds  # noqa: E402
from thermoflow.simulator import packets  # noqa: E402
from thermoflow.simulator.connection import Connection, Endpoint, PublishStats  # noqa: E402
from thermoflow.stack.services import Mosquitto, service_home  # noqa: E402

#: label -> (autosave_interval, autosave_on_changes). The first is the baseline (the old config).
CANDIDATES: dict[str, tuple[int, bool]] = {
    "interval 10 s (old)": (10, False),
    "interval 1 s": (1, False),
    "on_changes 10000": (10_000, True),
    "on_changes 1000": (1_000, True),
    "on_changes 100": (100, True),
}


@dataclass
class Result:
    label: str
    acked: int
    seconds: float
    cpu_s: float
    survived: int

    @property
    def rate(self) -> float:
        return self.acked / self.seconds

    @property
    def cpu_ms_per_1000(self) -> float:
        return 1000 * self.cpu_s / max(1, self.acked) * 1000

    @property
    def lost(self) -> int:
        return self.acked - self.survived

    @property
    def lost_seconds(self) -> float:
        return self.lost / self.rate if self.rate else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def session(
    broker: Mosquitto, client_id: str, on_message: paho.CallbackOnMessage | None = None
) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.max_inflight_messages_set(1000)
    if on_message is not None:
        client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def subscribe_and_leave(broker: Mosquitto, client_id: str, topic: str) -> None:
    subscribed = threading.Event()
    client = session(broker, client_id)
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe(topic, qos=1)
    if not subscribed.wait(10):
        raise RuntimeError("no SUBACK")
    client.disconnect()
    client.loop_stop()


async def publish_then_kill(
    broker: Mosquitto, *, topic: str, seconds: float, rate: float
) -> tuple[int, float, float]:
    """Publish seq numbers until ``seconds`` pass, then kill -9 the broker; (acked, seconds, broker cpu)."""
    pid = broker.pid()
    assert pid is not None
    stats = PublishStats()
    connection = Connection(
        client_id=f"bench-pub-{uuid.uuid4().hex[:6]}",
        endpoint=Endpoint(broker.host, broker.port),
        qos=1,
        window=1000,
        stats=stats,
    )
    await connection.connect()
    field = packets.topic_field(topic.encode())
    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    seq, chunk = 0, 500
    while (elapsed := time.perf_counter() - started) < seconds:
        if connection.queued < 5000:
            connection.publish([field] * chunk, [b"%d" % n for n in range(seq, seq + chunk)])
            seq += chunk
        if rate:
            await asyncio.sleep(max(0.0, seq / rate - elapsed))
        else:
            await asyncio.sleep(0)
    cpu = cpu_seconds(pid) - cpu_before
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(connection.wait_lost(), 10)
    return stats.acked, elapsed, cpu


def count_survivors(broker: Mosquitto, client_id: str, acked: int) -> int:
    """Distinct acked seq numbers the restarted broker delivers to the session."""
    seen: set[int] = set()
    last = [time.monotonic()]

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        seen.add(int(message.payload))
        last[0] = time.monotonic()

    client = session(broker, client_id, on_message)
    try:
        while time.monotonic() - last[0] < 3.0:
            time.sleep(0.2)
    finally:
        client.disconnect()
        client.loop_stop()
    return sum(1 for n in seen if n < acked)


def measure(label: str, *, interval: int, on_changes: bool, seconds: float, rate: float) -> Result:
    home = service_home(ROOT / ".thermoflow" / f"bench-mosquitto-{uuid.uuid4().hex[:8]}")
    broker = Mosquitto(
        home=home,
        host="127.0.0.1",
        port=free_port(),
        autosave_interval=interval,
        autosave_on_changes=on_changes,
    )
    broker.up()
    try:
        topic = f"bench/{uuid.uuid4().hex[:8]}/temperature"
        client_id = f"bench-session-{uuid.uuid4().hex[:8]}"
        subscribe_and_leave(broker, client_id, topic)
        acked, elapsed, cpu = asyncio.run(publish_then_kill(broker, topic=topic, seconds=seconds, rate=rate))
        broker.up()
        survived = count_survivors(broker, client_id, acked)
        return Result(label, acked, elapsed, cpu, survived)
    finally:
        broker.down()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="publish this long, then kill -9")
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s (0: as fast as possible)")
    parser.add_argument("--only", default="", help="comma-separated labels (default: all)")
    args = parser.parse_args()
    chosen = [label for label in CANDIDATES if not args.only or label in args.only.split(",")]
    results = []
    for label in chosen:
        interval, on_changes = CANDIDATES[label]
        result = measure(
            label, interval=interval, on_changes=on_changes, seconds=args.seconds, rate=args.rate
        )
        results.append(result)
        print(
            f"  measured {label}: {result.acked:,} acked, {result.lost:,} lost", file=sys.stderr, flush=True
        )
    base = results[0]
    print(f"\nQoS 1 into an offline persistent session, {args.seconds:.0f} s, kill -9 while publishing"
          f" ({'as fast as possible' if not args.rate else f'{args.rate:,.0f}/s'})")  # fmt: skip
    header = (
        f"{'config':<22}{'acked/s':>10}{'x':>6}{'cpu ms/1k':>11}{'x':>6}{'acked':>9}{'lost':>9}{'lost s':>8}"
    )
    print(header)
    for r in results:
        print(
            f"{r.label:<22}{r.rate:>10,.0f}{r.rate / base.rate:>6.2f}{r.cpu_ms_per_1000:>11.1f}"
            f"{r.cpu_ms_per_1000 / base.cpu_ms_per_1000:>6.2f}{r.acked:>9,}{r.lost:>9,}{r.lost_seconds:>8.2f}"
        )


if __name__ == "__main__":
    main()
