"""Bad flags fail fast, before any connection, with exit code 2 and a message naming the flag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from thermoflow.settings import ConfigError, load_settings
from thermoflow.simulator.settings import SimulatorSettings


def _simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thermoflow", "simulate", "--mqtt-url", "mqtt://127.0.0.1:1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "300"},
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"rate": 1, "total_rate": 5}, "not both"),
        ({"topic_template": "sensors/{metric}"}, "must contain {device_id}"),
        ({"format": "xml"}, "format (--format or THERMOFLOW_FORMAT)"),
        ({"qos": 2}, "qos (--qos or THERMOFLOW_QOS)"),
        ({"devices": 0}, "devices (--devices or THERMOFLOW_DEVICES)"),
        ({"profiles": "fridge"}, "unknown profile 'fridge'"),
        ({"anomaly_kinds": "meltdown"}, "unknown anomaly kind"),
        ({"connections": 20, "devices": 10}, "cannot exceed --devices"),
        ({"time_scale": 60}, "--time-scale above 1 needs --duration"),
    ],
)
def test_bad_settings_name_the_flag(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(SimulatorSettings, **flags)
    assert message in str(error.value)


def test_a_fast_fleet_clock_ends_at_now_so_no_reading_is_from_the_future() -> None:
    settings = load_settings(SimulatorSettings, time_scale=60, duration=30)
    assert settings.clock_start == 30 * 59  # the last of 30 real seconds is stamped now
    assert load_settings(SimulatorSettings, duration=30).clock_start == 0


def test_bad_flags_exit_2_before_connecting() -> None:
    result = _simulate("--rules", "/nonexistent/rules.yaml", "--duration", "1")
    assert result.returncode == 2, result.stderr
    assert "cannot read the rules file" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_broker_is_a_clear_error_not_a_hang() -> None:
    result = _simulate("--devices", "3", "--duration", "60")  # port 1: nothing listens there
    assert result.returncode == 2, result.stderr
    assert "no connection to the MQTT broker at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_measure_without_kafka_is_a_clear_error() -> None:
    result = _simulate("--devices", "3", "--duration", "1", "--measure", "--kafka-bootstrap", "127.0.0.1:1")
    assert result.returncode == 2, result.stderr
    assert "--measure: cannot read Kafka at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_anomaly_schedule_names_the_entry(tmp_path: Path) -> None:
    schedule = tmp_path / "anomalies.yaml"
    schedule.write_text("- {kind: spike, device: rack-0001, at: 1}\n- {kind: spike, device: nobody, at: 1}\n")
    result = _simulate("--anomaly-schedule", str(schedule), "--devices", "5", "--duration", "1")
    assert result.returncode == 2
    assert "anomaly #1: device 'nobody' is not in the fleet" in result.stderr


def test_help_lists_the_flags() -> None:
    result = _simulate("--help")
    assert result.returncode == 0
    for flag in ("--devices", "--total-rate", "--qos", "--format", "--topic-template", "--seed", "--measure"):
        assert flag in result.stdout
