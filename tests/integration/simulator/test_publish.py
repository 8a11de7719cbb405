"""What the simulator says it published is what a real Mosquitto subscriber receives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Endpoints, free_port, unique_name
from tests.integration.simulator.conftest import run_simulation
from thermoflow.rules import DEFAULT_RULES_FILE, load_rules
from thermoflow.simulator.run import Controls, Outputs, simulate
from thermoflow.simulator.settings import SimulatorSettings
from thermoflow.simulator.truth import read_truth


def _settings(endpoints: Endpoints, prefix: str, **values: Any) -> SimulatorSettings:
    return SimulatorSettings(
        mqtt_url=endpoints.mqtt_url,
        topic_template=f"{prefix}/{{device_id}}/{{metric}}",
        client_prefix=unique_name("sim"),
        **values,
    )


def _decode_json(payload: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict) or set(body) != {"value", "ts", "seq", "unit"}:
        return None
    value = body["value"]
    return body if isinstance(value, float) and math.isfinite(value) else None


def test_a_subscriber_sees_exactly_what_the_report_claims(
    endpoints: Endpoints, subscriber_for: Any, tmp_path: Path
) -> None:
    prefix = unique_name("sim")
    subscriber = subscriber_for(prefix, qos=1)
    settings = _settings(
        endpoints,
        prefix,
        devices=60,
        rate=4.0,
        duration=4.0,
        qos=1,
        connections=7,
        seed=21,
        anomaly_rate=600.0,  # every kind, many times, in four seconds
    )
    report = run_simulation(settings, Outputs(report=tmp_path / "report.json"))
    publish = report["publish"]
    assert publish["unacked_at_end"] == 0 and publish["queued_at_end"] == 0
    assert publish["acked"] == publish["messages"] == publish["readings"] + publish["malformed"]
    got = subscriber.wait_for(publish["messages"])
    assert len(got) == publish["messages"]

    truth = read_truth(tmp_path / "report.truth.json")
    assert report["ground_truth"]["kept"] is True
    assert report["ground_truth"]["file"] == str(tmp_path / "report.truth.json")
    rules = load_rules(DEFAULT_RULES_FILE)
    seqs: dict[str, list[int]] = defaultdict(list)
    breaching = set()
    malformed = 0
    for topic, payload in got:
        _, device_id, metric = topic.split("/")
        assert metric == "temperature"
        body = _decode_json(payload)
        if body is None:
            malformed += 1
            continue
        seqs[device_id].append(body["seq"])
        breach = rules.classify(device_id, metric, body["value"])
        if breach is not None:
            breaching.add(
                (device_id, body["seq"], body["ts"], body["value"], breach.rule_id, breach.severity)
            )

    # Gapless sequence numbers per device, as many as the ground truth says each device published.
    assert sum(len(s) for s in seqs.values()) == report["published"] == publish["readings"]
    for device_id, numbers in seqs.items():
        assert numbers == list(range(len(numbers))), device_id
    assert {d: len(s) for d, s in seqs.items()} == {d: n for d, n in truth.published.items() if n}
    # Malformed payloads: as many as sent, and as the report and the ground truth say.
    assert (
        malformed
        == publish["malformed"]
        == len(truth.malformed)
        == report["anomalies"]["by_kind"]["malformed"]
    )
    assert malformed > 0
    # The ground truth agrees with a scalar re-evaluation of the values the subscriber received.
    recorded = {(b.device_id, b.seq, b.ts, b.value, b.rule_id, b.severity) for b in truth.breaches}
    assert recorded == breaching
    assert len(breaching) == report["ground_truth"]["breaching_readings"] > 0
    assert publish["offline_slots"] > 0  # dropouts happened, and published nothing
    assert publish["slots"] == publish["messages"] + publish["offline_slots"]


def test_many_connections_at_qos0_with_a_ramp(endpoints: Endpoints, subscriber_for: Any) -> None:
    prefix = unique_name("sim")
    subscriber = subscriber_for(prefix, qos=0)
    settings = _settings(
        endpoints,
        prefix,
        devices=600,
        total_rate=1200.0,
        duration=2.0,
        qos=0,
        connections=600,
        ramp=1.0,
        format="senml",
        anomaly_rate=0.0,
    )
    report = run_simulation(settings, Outputs())
    assert report["ground_truth"]["kept"] is False  # nothing to write it to: counts only
    assert report["ground_truth"]["episodes"] == {"warning": None, "critical": None}
    connections = report["publish"]["connections"]
    assert connections["connected_at_start"] == 600
    assert connections["disconnects"] == 0 and connections["connected_at_end"] == 0
    assert connections["ramp_s"] >= 1.0
    got = subscriber.wait_for(report["publish"]["messages"])
    assert len(got) == report["publish"]["messages"] == 2400
    senml = [json.loads(payload) for _, payload in got]
    assert all(list(record[0]) == ["n", "u", "v", "t"] for record in senml)
    assert len({topic for topic, _ in got}) == 600


async def test_the_simulator_serves_its_publishing_on_metrics(endpoints: Endpoints) -> None:
    """With ``http_port`` set, Prometheus sees what the simulator wrote while it runs."""
    port = free_port()
    settings = _settings(
        endpoints, unique_name("sim"), devices=20, rate=10.0, duration=3.0, qos=1, http_port=port
    )
    controls = Controls()
    run = asyncio.create_task(simulate(settings, Outputs(), controls))
    seen: list[float] = []
    async with aiohttp.ClientSession() as session:
        while not run.done():
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
                    text = await answer.text()
                    seen += [float(line.split()[-1]) for line in text.splitlines()
                             if line.startswith("thermoflow_simulator_published_total ")]  # fmt: skip
            await asyncio.sleep(0.5)
    report = await run
    assert seen and max(seen) > 0, "no published count on /metrics while publishing"
    assert max(seen) <= report["publish"]["messages"]
    assert seen == sorted(seen)  # a counter


def test_the_simulator_serves_nothing_by_default() -> None:
    assert SimulatorSettings().http_port == 0
