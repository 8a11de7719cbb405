"""`thermoflow demo`'s view and summary, without services: what a person reads must be right."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from rich.console import Console

from thermoflow import demo
from thermoflow.console.settings import ConsoleSettings
from thermoflow.demo import THRESHOLD_CHECK, Sample, Stored, describe, render, run_demo, summarize
from thermoflow.pipeline_run import PipelineRun
from thermoflow.settings import ThermoflowSettings
from thermoflow.webhook_receiver import Delivery, WebhookReceiver


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


# -- the console the demo serves (issue 16) ---------------------------------------------------------


def test_the_live_view_shows_the_consoles_url_and_login(tmp_path: Path) -> None:
    run = PipelineRun(ThermoflowSettings(), tmp_path)
    at = demo.ConsoleAt("http://127.0.0.1:40123/", "s3cret-token", moved="port 8080 is taken: ...")
    view = _text(render(run, Sample(0.0, {}, {}, Stored()), None, title="demo", console=at))
    assert "http://127.0.0.1:40123/" in view
    assert "s3cret-token" in view and "any name" in view
    assert "port 8080 is taken" in view


def test_the_demo_login_is_a_token_of_this_run_unless_one_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("THERMOFLOW_CONSOLE_TOKEN", raising=False)
    monkeypatch.delenv("THERMOFLOW_CONSOLE_PORT", raising=False)
    run = PipelineRun.isolated(ThermoflowSettings(), tmp_path, resolve_after=20.0)
    first, second = demo.console_settings(run), demo.console_settings(run)
    assert first.console_token is not None and second.console_token is not None
    assert len(first.console_token.get_secret_value()) >= 16
    assert first.console_token.get_secret_value() != second.console_token.get_secret_value()
    assert first.console_port == 8080 and first.console_host == "127.0.0.1"
    # The console reads the run's own topics and groups, not the stack's defaults.
    assert first.deadletter_topic == run.settings.deadletter_topic
    assert first.sink_group == run.names["THERMOFLOW_SINK_GROUP"]
    assert run.names["THERMOFLOW_NOTIFY_GROUP"] in first.groups
    assert first.notifier_state_topic == run.names["THERMOFLOW_NOTIFIER_STATE_TOPIC"]

    monkeypatch.setenv("THERMOFLOW_CONSOLE_TOKEN", "chosen-by-me")
    chosen = demo.console_settings(run).console_token
    assert chosen is not None and chosen.get_secret_value() == "chosen-by-me"


async def _status(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url + "healthz") as answer:
        return answer.status


async def test_a_taken_port_moves_the_console_to_a_free_one_and_says_so(tmp_path: Path) -> None:
    run = PipelineRun(ThermoflowSettings(), tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = demo.console_settings(run).model_copy(update={"console_port": port})
        async with contextlib.AsyncExitStack() as stack:
            at = await demo.open_console(stack, settings, background=False)
            assert f":{port}/" not in at.url
            assert f"port {port} is taken" in at.moved and at.url in at.moved
            assert await _status(at.url) == 200
        with pytest.raises(aiohttp.ClientConnectionError):  # closed with the stack
            await _status(at.url)


class _QuickRun:
    """A run whose pipeline starts at once and whose fleet checks the console while it publishes."""

    def __init__(self, workdir: Path) -> None:
        self.settings = ThermoflowSettings()
        self.names: dict[str, str] = {}
        self.workdir = workdir
        self.receiver = WebhookReceiver()
        self.seen: list[tuple[str, int]] = []
        self.view = ""

    async def start(self, *run_args: str) -> None:
        pass

    async def simulate(self, *args: str) -> dict[str, object]:
        for _ in range(100):  # the view shows the console once it is up
            await asyncio.sleep(0.05)
            self.view = _SCREEN.getvalue()
            if "console http://" in self.view:
                break
        url = self.view.split("console ", 1)[1].split()[0]
        self.seen.append((url, await _status(url)))
        return {}

    async def stop(self) -> int | None:
        return 0


_SCREEN = io.StringIO()


@pytest.mark.usefixtures("no_kafka_baseline")
async def test_the_demo_serves_the_console_while_it_runs_and_stops_it_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("THERMOFLOW_CONSOLE_PORT", raising=False)
    monkeypatch.delenv("THERMOFLOW_CONSOLE_TOKEN", raising=False)

    @contextlib.asynccontextmanager
    async def observer(_settings: ThermoflowSettings) -> AsyncIterator[None]:
        yield None

    async def sample(*_: object) -> Sample:
        return Sample(time.monotonic(), {}, {}, Stored())

    async def settled(*_: object) -> None:
        pass

    async def quiet_console(stack: contextlib.AsyncExitStack, settings: ConsoleSettings) -> demo.ConsoleAt:
        # The pages, without the parts that read Kafka and MQTT in the background: no services here.
        return await opened(stack, settings, background=False)

    opened = demo.open_console
    monkeypatch.setattr(demo, "kafka_observer", observer)
    monkeypatch.setattr(demo, "take_sample", sample)
    monkeypatch.setattr(demo, "settle", settled)
    monkeypatch.setattr(demo, "open_console", quiet_console)
    _SCREEN.seek(0)
    _SCREEN.truncate()
    run = _QuickRun(tmp_path)
    screen = Console(file=_SCREEN, force_terminal=True, width=200, color_system=None)
    await run_demo(cast(PipelineRun, run), devices=1, duration=1.0, seed=1, live=True, console=screen)
    [(url, status)] = run.seen
    assert status == 200, "the console did not answer while the demo ran"
    assert "password " in run.view and "any name" in run.view
    with pytest.raises(aiohttp.ClientConnectionError):
        await _status(url)
