"""Benchmark: `thermoflow simulate` publish throughput and connection count, against naive paho.

    .venv/bin/python bench/bench_simulator.py [--mqtt-url mqtt://127.0.0.1:1883] [--seconds 10]

Prints, measured in this run against the same broker:

1. baseline: one paho client publishing JSON readings in a tight loop (QoS 0, then QoS 1
   with paho's default in-flight window raised to 256), fed by the same payload formatting;
2. the simulator at QoS 0 and at QoS 1, asked for a rate above what it can do (so the
   figure is its ceiling) and at the issue's targets (100,000/s and 30,000/s: does it hold?);
3. 10,000 connections opened with a ramp and held while publishing, 1 reading/s each.

QoS 0 rates count publishes handed to the kernel's sockets (the broker confirms nothing at
QoS 0), over the publishing time plus the time the send buffers took to drain. QoS 1 rates
count publishes the broker acknowledged (PUBACK), over publishing plus the last acks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from thermoflow.settings import ThermoflowSettings
from thermoflow.simulator.payloads import PayloadFormat
from thermoflow.simulator.run import Controls, Outputs, simulate
from thermoflow.simulator.settings import SimulatorSettings


def paho_baseline(settings: ThermoflowSettings, *, qos: int, seconds: float) -> float:
    """Messages per second from one paho client in a loop (the naive way), over ``seconds``."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(256)
    client.max_queued_messages_set(0)
    acked = threading.Semaphore(0)
    client.on_publish = lambda *_: acked.release()
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    fmt = PayloadFormat("json")
    topics = [f"bench/paho/rack-{i:04d}/temperature" for i in range(1000)]
    sent = 0
    started = time.monotonic()
    deadline = started + seconds
    info = None
    while time.monotonic() < deadline:
        for _ in range(1000):
            payload = fmt.reading(21.5 + (sent % 7) / 10, time.time(), sent)
            info = client.publish(topics[sent % 1000], payload, qos=qos)
            sent += 1
            if qos and sent % 256 == 0:
                # paho queues without bound otherwise; wait for the window like a careful user would.
                info.wait_for_publish(10)
    if info is not None:
        info.wait_for_publish(30)
    elapsed = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    return sent / elapsed


def run_simulator(mqtt_url: str, **values: Any) -> dict[str, Any]:
    settings = SimulatorSettings(
        mqtt_url=mqtt_url,
        anomaly_rate=0.0,
        client_prefix=f"bench-{uuid.uuid4().hex[:6]}",
        topic_template="bench/sim/{device_id}/{metric}",
        **values,
    )
    return asyncio.run(simulate(settings, Outputs(drain_timeout=60), Controls()))


def rate_of(report: dict[str, Any]) -> float:
    """Publishes per second the broker took: acked ones at QoS 1, written ones at QoS 0."""
    publish = report["publish"]
    confirmed = publish["acked"] if report["run"]["qos"] == 1 else publish["written"]
    return float(confirmed) / float(report["run"]["duration_s"] + report["publish"]["drain_s"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mqtt-url", default=os.environ.get("THERMOFLOW_MQTT_URL", "mqtt://127.0.0.1:1883"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--hold-connections", type=int, default=10_000)
    args = parser.parse_args()
    base = ThermoflowSettings(mqtt_url=args.mqtt_url)
    seconds = args.seconds

    print(f"broker {args.mqtt_url}, {seconds:.0f}s per figure, {os.cpu_count()} cores", flush=True)
    paho0 = paho_baseline(base, qos=0, seconds=seconds)
    print(f"baseline  paho, 1 client, QoS 0:           {paho0:>10,.0f} msg/s", flush=True)
    paho1 = paho_baseline(base, qos=1, seconds=seconds)
    print(f"baseline  paho, 1 client, QoS 1:           {paho1:>10,.0f} msg/s", flush=True)

    figures = [
        ("QoS 0, ceiling (asked 1,000,000/s)", {"qos": 0, "total_rate": 1_000_000, "connections": 20}, paho0),
        ("QoS 0, target 100,000/s", {"qos": 0, "total_rate": 100_000, "connections": 20}, paho0),
        ("QoS 1, ceiling (asked 300,000/s)", {"qos": 1, "total_rate": 300_000, "connections": 20}, paho1),
        ("QoS 1, target 30,000/s", {"qos": 1, "total_rate": 30_000, "connections": 20}, paho1),
    ]
    for label, values, baseline in figures:
        report = run_simulator(args.mqtt_url, devices=10_000, duration=seconds, inflight=512, **values)
        rate = rate_of(report)
        held = "held" if report["publish"]["rate_held"] else "NOT held"
        ack = report["publish"]["ack_latency"]
        ack_text = f", publish->puback p99 {ack['p99_ms']:.1f} ms" if ack else ""
        print(
            f"simulator {label:<36} {rate:>10,.0f} msg/s  ({held}; x{rate / baseline:.1f} paho{ack_text})",
            flush=True,
        )

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.hold_connections + 500
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    n = args.hold_connections
    started = time.monotonic()
    report = run_simulator(
        args.mqtt_url, devices=n, connections=n, rate=1.0, duration=max(seconds, 20.0), qos=1, ramp=10.0
    )
    conns = report["publish"]["connections"]
    timeline = report["publish"]["timeline"]
    lowest = min(s["connected"] for s in timeline) if timeline else 0
    print(
        f"simulator {n:,} connections: {conns['connected_at_start']:,} up"
        f" after a {conns['ramp_s']:.1f}s ramp,"
        f" lowest while publishing {lowest:,}, {conns['disconnects']} disconnects,"
        f" {report['publish']['acked']:,} readings acked at {rate_of(report):,.0f}/s"
        f" (whole run {time.monotonic() - started:.0f}s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
