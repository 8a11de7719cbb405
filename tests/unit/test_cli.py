"""Bad flags fail fast with a message that names them: exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


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
