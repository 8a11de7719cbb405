"""`thermoflow demo` on real services: the live view shows the flow, the summary adds up, and the
incidents catch what went wrong with the fleet (the simulator's ``anomaly_detection``)."""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console

from tests.conftest import ROOT, Endpoints
from thermoflow.demo import RESOLVE_AFTER_S, THRESHOLD_CHECK, run_demo
from thermoflow.pipeline_run import PipelineRun

SCHEDULE = ROOT / "tests" / "e2e" / "demo_anomalies.yaml"
DEVICES, DURATION = 100, 80.0


def _judge(section: dict[str, Any]) -> dict[str, Any]:
    """What the issue's targets read: recall per detectable kind, false incidents, offline delay."""
    return {
        "recall": {k: r["recall_detectable"] for k, r in section["by_kind"].items() if r["detectable"]},
        "false": section["false_incidents"]["first"],
        "offline p99 ms": (section["by_kind"]["dropout"]["delay"] or {}).get("p99_ms"),
        "missed": section["missed"],
    }


async def test_demo_shows_the_fleet_live_sums_up_the_run_and_catches_its_anomalies(
    endpoints: Endpoints,
) -> None:
    # The demo's own names would be the stack's defaults: here the run gets names of its own.
    run = PipelineRun.isolated(
        endpoints.settings(), ROOT / ".thermoflow" / "e2e" / "demo", resolve_after=RESOLVE_AFTER_S
    )
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    try:
        summary = await run_demo(
            run, devices=DEVICES, duration=DURATION, seed=7, live=True, console=console,
            anomaly_rate=0.0, anomaly_schedule=SCHEDULE,
        )  # fmt: skip
    finally:
        run.drop_schema()

    published = summary["readings published"]
    assert published >= DEVICES * DURATION * 0.9
    assert summary["readings stored"] == published
    assert summary["readings lost / doubled"] == "0 / 0"
    assert summary["dead letters (malformed on purpose)"] == 1
    assert summary[THRESHOLD_CHECK] == "1.0 / 1.0"
    opened, resolved = (int(n) for n in summary["incidents opened / resolved"].split(" / "))
    # Every anomaly of this run ends before the fleet stops: every device incident resolves, the
    # offline ones on their device's next reading.
    assert opened > 0 and resolved == opened, summary["device incidents still open"]
    assert summary["notifications"] >= 2 * opened  # a fire and a resolve each, at least

    # Scored against what the fleet really did: every kind has detectable anomalies in this run.
    section = json.loads((run.workdir / "report.json").read_text())["anomaly_detection"]
    judged = _judge(section)
    assert section["measured"]
    assert {k: r["detectable"] for k, r in section["by_kind"].items()} == dict.fromkeys(
        ("spike", "drift", "stuck", "dropout", "flapping"), 3
    ), judged
    assert all(recall >= 0.95 for recall in judged["recall"].values()), judged
    # The target is <= 1 false incident per 1,000 device-hours; this run is 2.2 device-hours, where
    # a single one would be 450: the honest short-run form is none at all.
    assert section["false_incidents"]["count"] == 0, judged
    offline_after = max(d.get("offline_after") or 0.0 for d in section["detectors"].values())
    assert judged["offline p99 ms"] <= (offline_after + 2.0) * 1000, judged
    for kind in section["by_kind"]:
        assert f"anomalies caught: {kind}" in summary
    assert summary["false incidents per 1,000 device-hours"] == "0.0 (0)"

    view = screen.getvalue()
    for part in ("thermoflow demo: 100 devices", "readings in Kafka", "readings stored", "consumer lag",
                 "open incidents", "latest notifications", run.names["THERMOFLOW_SINK_GROUP"]):  # fmt: skip
        assert part in view, part
    # Each incident's worst value reads in its kind's unit, not as °C for all.
    assert "stuck for" in view or "offline: no reading" in view
