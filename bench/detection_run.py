"""The whole pipeline scored by the simulator's ``anomaly_detection``: issue 13's long target run.

    .venv/bin/python bench/detection_run.py [--devices 1000] [--duration 1800] [--anomaly-rate 2]

Starts every component under `thermoflow run` with names of its own (topics, groups, schema:
:meth:`thermoflow.pipeline_run.PipelineRun.isolated`) on the services of ``THERMOFLOW_*``
(the local stack by default), runs `thermoflow simulate --measure` against it, prints the
detection table (per kind: detected / detectable, recall, delay p50 / p99), false incidents
per 1,000 device-hours, loss and latency, and drops the run's schema.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

from thermoflow.pipeline_run import PipelineRun
from thermoflow.settings import ThermoflowSettings


def summary(report: dict[str, Any]) -> list[str]:
    found = report["anomaly_detection"]
    lines = [f"{'kind':9} {'found/detectable':>17} {'recall':>7} {'all':>6} {'p50 s':>7} {'p99 s':>7}"]
    for kind, row in found["by_kind"].items():
        p50, p99 = ((row["delay"].get(key) or 0) / 1000 for key in ("p50_ms", "p99_ms"))
        lines.append(
            f"{kind:9} {row['detected_detectable']:>8}/{row['detectable']:<8} {row['recall_detectable']:>7}"
            f" {row['recall_all']:>6} {p50:>7.1f} {p99:>7.1f}"
        )
    false = found["false_incidents"]
    lines.append(
        f"false incidents: {false['count']} in {false['device_hours']:.0f} device-hours"
        f" = {false['per_1000_device_hours']} per 1,000"
    )
    kafka, database = report["delivery"]["kafka"], report["delivery"]["database"]
    lines.append(
        f"readings lost / doubled: Kafka {kafka['lost']} / {kafka['duplicates']}, database {database['lost']}"
    )
    alert = report["latency"]["publish_to_alert"]
    lines.append(f"publish -> alert p50 {alert['p50_ms']} ms, p99 {alert['p99_ms']} ms")
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--anomaly-rate", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--resolve-after", type=float, default=300.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="detection-run-"))
    run = PipelineRun.isolated(ThermoflowSettings(), work, resolve_after=args.resolve_after)
    try:
        await run.start()
        report = await run.simulate(
            "--devices", str(args.devices), "--rate", "1", "--duration", str(args.duration),
            "--seed", str(args.seed), "--anomaly-rate", str(args.anomaly_rate), report=work / "report.json",
        )  # fmt: skip
        print("\n".join(summary(report)))
        print(f"report: {work / 'report.json'}")
    finally:
        await run.stop()
        run.drop_schema()


if __name__ == "__main__":
    asyncio.run(main())
