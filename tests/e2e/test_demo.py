"""`thermoflow demo` on real services: the live view shows the flow, and the summary adds up."""

from __future__ import annotations

import io

from rich.console import Console

from tests.conftest import ROOT, Endpoints
from thermoflow.demo import RESOLVE_AFTER_S, run_demo
from thermoflow.pipeline_run import PipelineRun


async def test_demo_shows_the_fleet_live_and_sums_up_the_run(endpoints: Endpoints) -> None:
    # The demo's own names would be the stack's defaults: here the run gets names of its own.
    run = PipelineRun.isolated(
        endpoints.settings(), ROOT / ".thermoflow" / "e2e" / "demo", resolve_after=RESOLVE_AFTER_S
    )
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    try:
        summary = await run_demo(run, devices=100, duration=25, seed=7, live=True, console=console)
    finally:
        run.drop_schema()

    published = summary["readings published"]
    assert published >= 100 * 25 * 0.9
    assert summary["readings stored"] == published
    assert summary["readings lost / doubled"] == "0 / 0"
    assert summary["alert precision / recall"] == "1.0 / 1.0"
    opened, resolved = (int(n) for n in summary["incidents opened / resolved"].split(" / "))
    assert opened > 0 and resolved == opened
    assert summary["notifications"] >= 2 * opened  # a fire and a resolve each, at least
    view = screen.getvalue()
    for part in ("thermoflow demo: 100 devices", "readings in Kafka", "readings stored", "consumer lag",
                 "open incidents", "latest notifications", run.names["THERMOFLOW_SINK_GROUP"]):  # fmt: skip
        assert part in view, part
