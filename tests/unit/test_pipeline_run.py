"""The environment `PipelineRun` gives its simulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from thermoflow.pipeline_run import PipelineRun
from thermoflow.settings import ThermoflowSettings


def test_the_simulator_does_not_take_the_port_the_run_counts_its_instances_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THERMOFLOW_HTTP_PORT", "23710")  # the bridge's, under `thermoflow run`
    run = PipelineRun(ThermoflowSettings(), tmp_path)
    assert run.env()["THERMOFLOW_HTTP_PORT"] == "23710"  # the components still get their base
    simulator = run.simulator_env()
    assert "THERMOFLOW_HTTP_PORT" not in simulator
    assert {k: v for k, v in run.env().items() if k != "THERMOFLOW_HTTP_PORT"} == simulator
