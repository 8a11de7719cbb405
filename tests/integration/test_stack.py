"""`thermoflow stack up | status | down` as a user runs them, on ports of its own."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from thermoflow.stack import Stack, StackConfig
from thermoflow.stack.process import pid_alive

# Below the ephemeral range (32768-60999 here): an outgoing connection of another test must not be
# holding the port when the stack binds it (CI saw Kafka fail with "Address already in use" on 39092).
PORTS = [
    "--mqtt-port",
    "22883",
    "--kafka-port",
    "22092",
    "--kafka-controller-port",
    "22093",
    "--postgres-port",
    "22432",
]


def thermoflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thermoflow", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Under the project, not /tmp/pytest-of-root: PostgreSQL's user must reach it.
    path = ROOT / ".thermoflow" / f"lifecycle-{uuid.uuid4().hex[:8]}"
    yield path
    thermoflow("stack", "down", "--purge", "--state-dir", str(path))


def stack_pids(state_dir: Path) -> list[int]:
    """The running servers' process ids, from their pid files."""
    stack = Stack(StackConfig(state_dir=state_dir))
    return [pid for service in stack.services if (pid := service.pid()) is not None]


def test_up_twice_status_down_leaves_nothing_behind(state_dir: Path) -> None:
    first = thermoflow("stack", "up", "--state-dir", str(state_dir), *PORTS)
    assert first.returncode == 0, first.stderr
    assert "THERMOFLOW_KAFKA_BOOTSTRAP=127.0.0.1:22092" in first.stdout
    pids = stack_pids(state_dir)
    assert len(pids) == 3 and all(pid_alive(pid) for pid in pids)

    again = thermoflow("stack", "up", "--state-dir", str(state_dir))  # ports from the saved config
    assert again.returncode == 0, again.stderr
    assert stack_pids(state_dir) == pids, "a second `up` must leave running services alone"

    status = thermoflow("stack", "status", "--state-dir", str(state_dir))
    assert status.returncode == 0
    assert status.stdout.count("│ running ") == 3  # the table's status cells (a "database:" line follows)

    check = thermoflow("stack", "check", "--state-dir", str(state_dir))
    assert check.returncode == 0, check.stderr
    assert check.stdout.count("round trip") == 2

    down = thermoflow("stack", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert not [pid for pid in pids if pid_alive(pid)]
    stack = Stack(StackConfig(state_dir=state_dir))
    for folder in {state_dir, stack.mosquitto.home, stack.postgres.home}:
        leftovers = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True, check=False)
        assert leftovers.stdout.strip() == "", f"processes left behind: {leftovers.stdout}"

    after = thermoflow("stack", "status", "--state-dir", str(state_dir))
    assert after.returncode == 1
    assert after.stdout.count("│ stopped ") == 3
    assert (state_dir / "kafka" / "data").exists()  # a plain `down` keeps the data

    purged = thermoflow("stack", "down", "--purge", "--state-dir", str(state_dir))
    assert purged.returncode == 0, purged.stderr
    for folder in {state_dir, stack.mosquitto.home, stack.postgres.home}:
        assert not folder.exists(), f"{folder} left after --purge"


def test_bad_flag_fails_fast_with_a_message() -> None:
    result = thermoflow(
        "stack",
        "up",
        "--state-dir",
        str(ROOT / ".thermoflow" / "never"),
        "--mqtt-port",
        "31883",
        "--kafka-port",
        "31883",
    )
    assert result.returncode == 2
    assert "ports must differ" in result.stderr
    assert not (ROOT / ".thermoflow" / "never" / "kafka").exists()
