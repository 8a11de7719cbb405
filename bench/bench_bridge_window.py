"""The bridge's window: QoS 1 throughput and CPU per reading for each receive maximum.

    .venv/bin/python bench/bench_bridge_window.py [--windows 250,500,1000,2000,5000,10000]
                                                  [--messages 200000] [--repeat 2]

For each window, `thermoflow bridge` (a subprocess, MQTT 5) runs with
``THERMOFLOW_MQTT_RECEIVE_MAXIMUM`` and ``THERMOFLOW_BRIDGE_MAX_PENDING`` set to it, and the
publisher of `bench/bench_bridge.py` sends the load live at QoS 1. Printed per run: readings/s
landed in Kafka (as `bench_bridge.py` measures it) and the bridge's CPU seconds per 1,000
readings (its user + system time from /proc while the load ran, start-up excluded). The smallest
window within a few percent of the largest one's throughput is the one to ship: a smaller window
means fewer duplicates after a crash of the bridge and less memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "bench_bridge.py"


async def run_window(window: int, *, args: argparse.Namespace) -> tuple[float, float, int]:
    """(readings/s, bridge CPU-s per 1,000 readings, readings landed) for one window."""
    from bench.bench_bridge import end_offsets, measure
    from bench.common import cpu_seconds
    from thermoflow.ingest.settings import IngestSettings
    from thermoflow.kafka import ensure_topics

    tag = uuid.uuid4().hex[:8]
    prefix = f"benchw-{tag}"
    readings_topic, deadletter_topic = f"benchw-readings-{tag}", f"benchw-deadletter-{tag}"
    settings = IngestSettings()
    await ensure_topics(settings, {readings_topic: 12, deadletter_topic: 1})
    env = {
        **os.environ,
        "THERMOFLOW_READINGS_TOPIC": readings_topic,
        "THERMOFLOW_DEADLETTER_TOPIC": deadletter_topic,
        "THERMOFLOW_MQTT_TOPICS": f"{prefix}/+/temperature",
        "THERMOFLOW_TOPIC_TEMPLATE": f"{prefix}/{{device_id}}/{{metric}}",
        "THERMOFLOW_MQTT_CLIENT_ID": f"benchw-bridge-{tag}",
        "THERMOFLOW_MQTT_SESSION_EXPIRY": "60",
        "THERMOFLOW_MQTT_RECEIVE_MAXIMUM": str(window),
        "THERMOFLOW_BRIDGE_MAX_PENDING": str(window),
        "THERMOFLOW_LOG_LEVEL": "WARNING",
        "THERMOFLOW_HTTP_PORT": "0",  # no /metrics: the default port may be another run's
    }
    bridge = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "thermoflow", "bridge", env=env, cwd=ROOT
    )
    try:
        await asyncio.sleep(2.5)  # started, connected, subscribed
        cpu_before = cpu_seconds(bridge.pid)
        publisher = await asyncio.create_subprocess_exec(
            sys.executable, str(BENCH), "publish", prefix, str(args.messages), str(args.devices), "1",
            str(args.connections), env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        rate = await measure(
            bootstrap=settings.kafka_bootstrap,
            topic=readings_topic,
            partitions=12,
            expected=args.messages,
            timeout=args.timeout,
        )
        cpu = cpu_seconds(bridge.pid) - cpu_before
        out, _ = await asyncio.wait_for(publisher.communicate(), args.timeout)
        json.loads(out.decode().strip().splitlines()[-1])
        landed = await end_offsets(settings.kafka_bootstrap, readings_topic, 12)
        return rate, cpu / max(landed, 1) * 1000, landed
    finally:
        bridge.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(bridge.wait(), 60)
        except TimeoutError:
            bridge.kill()
            await bridge.wait()


async def main(args: argparse.Namespace) -> None:
    windows = [int(w) for w in args.windows.split(",")]
    print(
        f"{args.messages:,} QoS 1 messages from {args.devices:,} devices per run, {args.repeat} run(s) each"
    )
    print(f"{'window':>8} {'readings/s':>12} {'CPU-s/1000':>11} {'landed':>9}")
    for _ in range(args.repeat):
        for window in windows:
            rate, cpu, landed = await run_window(window, args=args)
            print(f"{window:>8,} {rate:>12,.0f} {cpu:>11.4f} {landed:>9,}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows", default="250,500,1000,2000,5000,10000")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0)
    asyncio.run(main(parser.parse_args()))
