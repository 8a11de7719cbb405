"""Incidents across a Kafka outage, on the whole pipeline (issue 11, defect 4).

`thermoflow run` (bridge, processor, sink, store, notifier) on a private Kafka node and the
shared Mosquitto and PostgreSQL; devices publish over MQTT throughout. Kafka is stopped for
30 s while a device keeps breaching, then started again: the backlog held by Mosquitto and the
bridge flows through, and neither the store nor the notifier may resolve the incident and fire
a new one for it. They must agree on every incident id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ROOT, Endpoints, unique_name
from tests.support.rules import thresholds_only_rules
from thermoflow import db
from thermoflow.pipeline_run import PipelineRun
from thermoflow.stack.services import Kafka

RESOLVE_AFTER = 5.0
OUTAGE_S = 30.0
BREACHING = "freezer-0035"
NORMAL = [f"freezer-{i:04d}" for i in range(1, 8)]


class Fleet:
    """Devices publishing a reading each every 0.5 s (QoS 1, device time = now) from a thread."""

    def __init__(self, endpoints: Endpoints, prefix: str) -> None:
        self.prefix = prefix
        self.breaching = True
        self.published = 0
        self._stop = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique_name("fleet"))
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        host, port = endpoints.mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
        self._client.connect(host, int(port))
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            now = time.time()
            for device in [BREACHING, *NORMAL]:
                value = -10.0 if device == BREACHING and self.breaching else -20.0
                value += 0.3 * (int(now) % 2)  # a live sensor's wobble: a constant one is stuck
                payload = json.dumps({"value": value, "ts": now})
                self._client.publish(f"{self.prefix}/{device}/temperature", payload, qos=1)
                self.published += 1

    def __enter__(self) -> Fleet:
        self._client.loop_start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._client.disconnect()
        self._client.loop_stop()


def _store_incidents(run: PipelineRun) -> list[tuple[str, str, str]]:
    with db.connect(run.settings) as conn:
        rows = conn.execute(
            "SELECT incident_id, device_id, status FROM incidents ORDER BY opened_at"
        ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def _transitions(run: PipelineRun) -> list[tuple[str, str, str]]:
    sent = [
        (d.json["incident_id"], d.json["device_id"], d.json["transition"]) for d in run.receiver.deliveries
    ]
    return list(dict.fromkeys(sent))  # a re-sent notification (same key) counts once


async def _until(check: Callable[[], object], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_kafka_outage_does_not_make_incidents_resolve_and_refire(
    endpoints: Endpoints, private_kafka: Kafka
) -> None:
    run = PipelineRun.isolated(
        endpoints.settings(kafka_bootstrap=private_kafka.address),
        ROOT / ".thermoflow" / "integration" / f"kafka-outage-{uuid.uuid4().hex[:6]}",
        resolve_after=RESOLVE_AFTER,
    )
    run.names.update({"THERMOFLOW_IDLE_AFTER": "3", "THERMOFLOW_WATERMARK_INTERVAL": "0.5"})
    # Threshold incidents only: the jump back to normal would also be a rate incident.
    run.workdir.mkdir(parents=True, exist_ok=True)
    rules = thresholds_only_rules(run.workdir / "rules.yaml")
    run.names["THERMOFLOW_RULES_FILE"] = str(rules)
    try:
        await run.start()
        with Fleet(endpoints, run.mqtt_prefix) as fleet:
            await _until(
                lambda: any(t[2] == "fire" for t in _transitions(run)) and _store_incidents(run),
                timeout=120,
                what="the incident fired and stored",
            )
            await asyncio.sleep(3)
            await asyncio.to_thread(private_kafka.down)
            await asyncio.sleep(OUTAGE_S)  # the device breaches on; Mosquitto and the bridge hold it
            await asyncio.to_thread(private_kafka.up)
            await asyncio.sleep(20)  # the backlog flows through; the device still breaches
            fleet.breaching = False

            def resolved() -> bool:
                stored = _store_incidents(run)
                sent = [t for t in _transitions(run) if t[2] == "resolve"]
                return bool(sent) and bool(stored) and all(s == "resolved" for _, _, s in stored)

            await _until(resolved, timeout=180, what="the incident resolved on both sides")
            await asyncio.sleep(2 * RESOLVE_AFTER)  # a wrong re-fire would show up now
        stored, sent = _store_incidents(run), _transitions(run)
        assert [(d, s) for _, d, s in stored] == [(BREACHING, "resolved")], (stored, sent)
        assert [(d, t) for _, d, t in sent] == [(BREACHING, "fire"), (BREACHING, "resolve")], (stored, sent)
        assert {i for i, _, _ in stored} == {i for i, _, _ in sent}
    finally:
        with contextlib.suppress(Exception):
            await run.stop()
        run.drop_schema()
