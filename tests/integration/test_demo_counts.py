"""`thermoflow demo` twice on the same stack: the second run's view counts that run only.

Both runs share topics, consumer groups and tables, as two demos on one local stack do. Before
the counts started at each run, the second showed the first's readings in Kafka too ("readings
in Kafka 99,865" against "readings stored 34,214" after a few runs).
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from tests.conftest import ROOT, Endpoints
from thermoflow.demo import RESOLVE_AFTER_S, run_demo
from thermoflow.pipeline_run import PipelineRun

DEVICES, DURATION = 5, 10.0


async def _demo(run: PipelineRun) -> tuple[dict[str, Any], str]:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    summary = await run_demo(
        run, devices=DEVICES, duration=DURATION, seed=3, live=True, console=console, anomaly_rate=0.0
    )
    return summary, screen.getvalue()


async def test_a_second_demo_on_the_same_stack_counts_from_its_own_start(endpoints: Endpoints) -> None:
    workdir = ROOT / ".thermoflow" / "integration" / "demo-counts"
    first = PipelineRun.isolated(endpoints.settings(), workdir / "first", resolve_after=RESOLVE_AFTER_S)
    # The same names again, as `thermoflow demo` run a second time on the same stack.
    second = PipelineRun(
        first.settings, workdir / "second", resolve_after=RESOLVE_AFTER_S,
        mqtt_prefix=first.mqtt_prefix, names=first.names,
    )  # fmt: skip
    try:
        before, _ = await _demo(first)
        after, view = await _demo(second)
    finally:
        first.drop_schema()

    assert before["readings published"] > 0 and after["readings published"] > 0
    assert before["readings in Kafka"] == before["readings published"], before
    # The regression: the second run's Kafka total was both runs' readings.
    assert after["readings in Kafka"] == after["readings published"], after
    assert after["readings stored"] == after["readings published"], after
    assert "flow since this run began" in view
