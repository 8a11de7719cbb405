"""`thermoflow demo`'s view and summary, without services: what a person reads must be right."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from pathlib import Path
from typing import cast

import pytest
from rich.console import Console

from thermoflow import demo
from thermoflow.demo import THRESHOLD_CHECK, Sample, Stored, describe, render, run_demo, summarize
from thermoflow.pipeline_run import PipelineRun
from thermoflow.settings import ThermoflowSettings
from thermoflow.webhook_receiver import Delivery


def _text(renderable: object) -> str:
    screen = io.StringIO()
    Console(file=screen, width=200, color_system=None).print(renderable)
    return screen.getvalue()


def test_open_incidents_show_their_kind_and_a_unit_that_fits_it(tmp_path: Path) -> None:
    run = PipelineRun(ThermoflowSettings(), tmp_path)
    open_incidents = [
        ("freezer-0001", "freezer", "threshold", "critical", "firing", "above", -4.2, -8.0, "temperature"),
        ("freezer-0002", "freezer", "offline", "critical", "firing", "offline", 31.0, 30.0, "temperature"),
        ("rack-0001", "rack", "stuck", "critical", "firing", "stuck", 64.0, 60.0, "temperature"),
        ("rack-0002", "rack", "rate", "warning", "firing", "rate", -5.5, 5.0, "temperature"),
        ("rack-0003", "rack", "outlier", "warning", "firing", "outlier", 7.25, 6.0, "temperature"),
    ]
    sample = Sample(0.0, {}, {}, Stored(open_incidents=open_incidents))
    view = _text(render(run, sample, None, title="demo"))
    shown = (
        "temperature -4.2 above -8",
        "offline: no reading for 31 s (limit 30 s)",
        "stuck for 64 s (limit 60 s)",
        "falling 5.5 °C/min (limit 5.0)",
        "outlier score 7.2 (limit 6)",
    )
    for part in shown:
        assert part in view, part
    assert "peak °C" not in view
    assert "kind" in view and "worst" in view


def test_a_notification_reads_in_its_kinds_unit_and_a_foreign_body_still_shows() -> None:
    body = {"transition": "fire", "severity": "critical", "device_id": "rack-0001", "rule_id": "rack",
            "condition": "stuck", "peak_value": 64.0, "threshold": 60.0, "metric": "temperature"}  # fmt: skip
    assert (
        describe(Delivery(0.0, {}, b"{}", body)) == "fire critical rack-0001 rack stuck for 64 s (limit 60 s)"
    )
    assert describe(Delivery(0.0, {}, b"not json", None)) == "not json"


def test_the_summary_labels_the_threshold_check_for_what_it_is(tmp_path: Path) -> None:
    report = {"alerts": {"precision": 1.0, "recall": 1.0}, "anomaly_detection": None}
    stored = Stored(opened=3, resolved=2, still_open=["freezer-0002 offline"], pipeline=1)
    summary = summarize(
        report, Sample(0.0, {}, {}, stored), notifications=5, workdir=tmp_path, readings_topic="readings"
    )
    assert summary[THRESHOLD_CHECK] == "1.0 / 1.0"
    assert "scalar" in THRESHOLD_CHECK and "alert precision / recall" not in summary
    assert summary["incidents opened / resolved"] == "3 / 2"
    assert summary["device incidents still open"] == "freezer-0002 offline"
    assert summary["pipeline incidents (ingest silent once the fleet stopped)"] == 1


def test_the_summary_counts_kafka_readings_of_this_run(tmp_path: Path) -> None:
    final = Sample(0.0, {"readings": 1_200, "deadletter": 1}, {}, Stored(readings=1_200))
    summary = summarize(
        {"published": 1_200}, final, notifications=0, workdir=tmp_path, readings_topic="readings"
    )
    assert summary["readings in Kafka"] == summary["readings published"] == 1_200


def test_the_view_says_its_totals_are_this_runs(tmp_path: Path) -> None:
    run = PipelineRun(ThermoflowSettings(), tmp_path)
    s = run.settings
    sample = Sample(0.0, {s.readings_topic: 34_214, s.deadletter_topic: 1}, {}, Stored(readings=34_214))
    view = _text(render(run, sample, None, title="demo"))
    assert "flow since this run began" in view
    assert view.count("34,214") == 2  # readings in Kafka and readings stored agree


class _Run:
    """A PipelineRun whose start hangs or fails: what the demo must stop whatever happens."""

    def __init__(self, *, fails: bool) -> None:
        self.fails = fails
        self.started_with: tuple[str, ...] = ()
        self.stopped = False
        self.starting = asyncio.Event()
        self.settings = ThermoflowSettings()

    async def start(self, *run_args: str) -> None:
        self.started_with = run_args
        self.starting.set()
        if self.fails:
            raise RuntimeError("no 'sink_started' from the pipeline within 120s")
        await asyncio.Event().wait()  # as a pipeline that never gets ready

    async def stop(self) -> int | None:
        self.stopped = True
        return 0


async def _demo(run: _Run) -> dict[str, object]:
    pipeline = cast(PipelineRun, run)
    console = Console(file=io.StringIO())
    return await run_demo(pipeline, devices=1, duration=1.0, seed=1, live=False, console=console)


@pytest.fixture
def no_kafka_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about stopping, with no Kafka: the run's start is taken as empty topics."""

    async def empty_start(_settings: ThermoflowSettings) -> demo.RunStart:
        return demo.RunStart(time.time())

    monkeypatch.setattr(demo, "run_start", empty_start)


@pytest.mark.usefixtures("no_kafka_baseline")
async def test_sighup_while_the_pipeline_starts_stops_what_the_demo_started(tmp_path: Path) -> None:
    # Issue 11: closing the terminal of a running demo left its five components running.
    run = _Run(fails=False)
    demo = asyncio.create_task(_demo(run))
    await asyncio.wait_for(run.starting.wait(), 10)
    os.kill(os.getpid(), signal.SIGHUP)
    assert await asyncio.wait_for(demo, 10) == {}
    assert run.stopped
    # `thermoflow run` stops its components when the demo dies, even by SIGKILL.
    assert "--exit-with-parent" in run.started_with


@pytest.mark.usefixtures("no_kafka_baseline")
async def test_a_demo_whose_pipeline_fails_to_start_stops_what_it_started(tmp_path: Path) -> None:
    # Issue 11: when the demo failed to start, a bridge stayed running.
    run = _Run(fails=True)
    with pytest.raises(RuntimeError, match="sink_started"):
        await _demo(run)
    assert run.stopped
