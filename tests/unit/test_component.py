"""A component stops within its grace period whatever it waits on; a second signal stops it at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from thermoflow.component import EXIT_STOP_TIMEOUT

COMPONENT = textwrap.dedent(
    """
    import asyncio, sys, time
    from thermoflow.component import run_until_signal

    async def main(stop):
        print("up", flush=True)
        await stop.wait()
        print("stopping", flush=True)
        if sys.argv[1] == "hang":
            await asyncio.Event().wait()  # a flush to a broker that is gone
        elif sys.argv[1] == "block":
            time.sleep(3600)  # a blocking call: the loop itself is stuck

    run_until_signal(main, grace=float(sys.argv[2]))
    """
)


def start(tmp_path: Path, mode: str, grace: float) -> subprocess.Popen[str]:
    script = tmp_path / "component.py"
    script.write_text(COMPONENT)
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "up"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_stops_a_component_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    proc = start(tmp_path, "clean", grace=30)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "stopping" in output


@pytest.mark.parametrize("mode", ["hang", "block"])
def test_a_component_that_cannot_stop_exits_hard_after_the_grace_saying_what_is_stuck(
    tmp_path: Path, mode: str
) -> None:
    proc = start(tmp_path, mode, grace=1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_STOP_TIMEOUT, output
    assert "shutdown_stuck" in output
    assert "component.py" in output  # the stack of what is stuck names the place


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    proc = start(tmp_path, "block", grace=3600)
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    while "stopping" not in proc.stdout.readline():  # the first signal was handled
        pass
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, output
