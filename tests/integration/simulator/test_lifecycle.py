"""`thermoflow simulate` stops cleanly on SIGTERM, and keeps publishing across a broker restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, Endpoints, unique_name
from tests.integration.simulator.conftest import run_simulation
from thermoflow.simulator.run import Outputs
from thermoflow.simulator.settings import SimulatorSettings
from thermoflow.stack.services import Mosquitto


def test_sigterm_stops_publishing_writes_the_report_and_exits_0(endpoints: Endpoints, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "thermoflow", "simulate", "--mqtt-url", endpoints.mqtt_url,
         "--devices", "50", "--rate", "10", "--duration", "120", "--qos", "1",
         "--topic-template", f"{unique_name('sim')}/{{device_id}}/{{metric}}",
         "--client-prefix", unique_name("sim"), "--report", str(report), "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        stderr_lines = []
        assert proc.stderr is not None
        while time.monotonic() < deadline:  # wait until it is connected and publishing
            line = proc.stderr.readline()
            stderr_lines.append(line)
            if '"connected"' in line or "connected" in line.split(" "):
                break
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(stderr_lines) + stderr
    body = json.loads(report.read_text())
    assert 1.0 < body["run"]["duration_s"] < 60
    publish = body["publish"]
    assert publish["messages"] > 0
    assert publish["acked"] == publish["messages"] and publish["unacked_at_end"] == 0


def test_connections_come_back_after_a_broker_restart(private_broker: Mosquitto) -> None:
    broker = private_broker
    import threading

    settings = SimulatorSettings(
        mqtt_url=f"mqtt://{broker.host}:{broker.port}",
        devices=40,
        rate=10.0,
        duration=6.0,
        qos=1,
        connections=8,
        anomaly_rate=0.0,
        client_prefix=unique_name("sim"),
    )

    def restart() -> None:
        time.sleep(1.5)
        broker.down()
        time.sleep(1.0)
        broker.up()

    restarter = threading.Thread(target=restart)
    restarter.start()
    try:
        report: dict[str, Any] = run_simulation(settings, Outputs())
    finally:
        restarter.join()
    publish = report["publish"]
    connections = publish["connections"]
    assert connections["connected_at_start"] == 8
    assert connections["disconnects"] >= 8 and connections["reconnects"] >= 8
    # Nothing given up: what waited during the outage went out after it and was acknowledged.
    assert publish["queued_at_end"] == 0 and publish["unacked_at_end"] == 0
    assert publish["acked"] == publish["messages"] == publish["slots"] == 40 * 10 * 6
    after = [s for s in publish["timeline"] if s["t"] >= 4.5]
    assert after and all(s["connected"] == 8 for s in after)
