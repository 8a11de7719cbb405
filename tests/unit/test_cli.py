"""Bad flags and unreachable services fail fast with a message that names them: exit 2, no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from thermoflow.stack import StackConfig


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stack", "up", "--bogus"], "No such option: --bogus"),
        (["sink", "--batch-size", "abc"], "Invalid value for '--batch-size'"),
        (["run", "--scale", "cruncher=2"], "--scale takes COMPONENT=N"),
        (["bridge", "--mqtt-url", "http://broker"], "mqtt_url"),
    ],
)
def test_bad_flags_exit_2_naming_the_problem(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "thermoflow", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def saved_stack(tmp_path: Path) -> Path:
    """A stack state dir whose saved ports nothing listens on."""
    ports = [free_port() for _ in range(4)]
    StackConfig(
        state_dir=tmp_path, mqtt_port=ports[0], kafka_port=ports[1], kafka_controller_port=ports[2],
        postgres_port=ports[3],
    ).save()  # fmt: skip
    return tmp_path


@pytest.mark.parametrize(
    ("args", "service", "setting"),
    [
        (["alerts", "list", "--database-url", "postgresql://ops:s3cret@127.0.0.1:{port}/x"],
         "PostgreSQL at postgresql://ops:***@127.0.0.1:{port}/x", "THERMOFLOW_DATABASE_URL"),
        (["alerts", "ack", "abc", "--database-url", "postgresql://ops:s3cret@127.0.0.1:{port}/x"],
         "PostgreSQL at postgresql://ops:***@127.0.0.1:{port}/x", "--database-url"),
        (["init", "--kafka-bootstrap", "127.0.0.1:{port}"], "Kafka at 127.0.0.1:{port}",
         "THERMOFLOW_KAFKA_BOOTSTRAP"),
        (["simulate", "--mqtt-url", "mqtt://127.0.0.1:{port}", "--devices", "1", "--duration", "1",
          "--quiet"],
         "MQTT broker at 127.0.0.1:{port}", "THERMOFLOW_MQTT_URL"),
    ],
)  # fmt: skip
def test_an_unreachable_service_is_named_with_its_address_and_setting(
    args: list[str], service: str, setting: str
) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "thermoflow", *(arg.format(port=port) for arg in args)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "1000"},  # one line: rich wraps at the terminal's width
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "s3cret" not in result.stderr + result.stdout
    assert f"cannot reach {service.format(port=port)}" in result.stderr or (
        service.format(port=port) in result.stderr  # the simulator's own wording
    ), result.stderr
    assert setting in result.stderr


def test_stack_check_names_the_service_and_how_to_start_it(tmp_path: Path) -> None:
    state_dir = saved_stack(tmp_path)
    mqtt_port = json.loads((state_dir / "stack.json").read_text())["mqtt_port"]
    result = subprocess.run(
        [sys.executable, "-m", "thermoflow", "stack", "check", "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "COLUMNS": "1000"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot reach the MQTT broker at mqtt://127.0.0.1:{mqtt_port}" in result.stderr
    assert f"thermoflow stack up --state-dir {state_dir}" in result.stderr
