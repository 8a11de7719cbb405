"""Incidents by event time on real Kafka and PostgreSQL: a processor stopped for far longer than
``resolve_after`` while a device keeps breaching must not make the store or the notifier resolve
its incident and then fire a new one when the backlog is processed (issue 11, defect 4).

The processor runs as `thermoflow process`; the alert store and the notifier (webhook channel to
a local receiver) run in this process. Readings go straight to the readings topic, with device
time = now, as the bridge would write them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from tests.conftest import unique_name
from tests.integration.alerts.helpers import eventually, running
from tests.integration.processors.conftest import ProcessorRig, reading
from tests.support.rules import thresholds_only_rules
from thermoflow import db
from thermoflow.alerts.notifier import Notifier
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.alerts.store import AlertStore
from thermoflow.settings import ThermoflowSettings
from thermoflow.webhook_receiver import WebhookReceiver

RESOLVE_AFTER = 4.0
PROCESSOR_DOWN_S = 60.0  # a minute, as the issue asks: fifteen times resolve_after
BREACHING = "freezer-0035"
NORMAL = [f"freezer-{i:04d}" for i in range(1, 6)]
PROCESSOR_ENV = {"THERMOFLOW_IDLE_AFTER": "2", "THERMOFLOW_WATERMARK_INTERVAL": "0.5"}


def _alerts_settings(
    settings: ThermoflowSettings, rig: ProcessorRig, receiver: WebhookReceiver
) -> AlertsSettings:
    return AlertsSettings(
        **{
            **settings.model_dump(),
            "database_url": settings.database_dsn,
            "alerts_topic": rig.alerts_topic,
            "deadletter_topic": rig.deadletter_topic,
            "store_group": unique_name("store"),
            "notify_group": unique_name("notify"),
            "notifier_state_topic": unique_name("state"),
            "resolve_after": RESOLVE_AFTER,
            "sweep_interval": 0.5,
            "store_batch_wait": 0.1,
            "webhook_url": receiver.url,
            "webhook_secret": "secret",
            "notify_log": False,
        }
    )


@contextlib.asynccontextmanager
async def publishing(rig: ProcessorRig, breaching: dict[str, bool]) -> AsyncIterator[None]:
    """Every 0.25 s a reading of each device, device time = now; BREACHING is too warm while told so."""

    async def publish() -> None:
        while True:
            now = time.time()
            wobble = 0.3 * (int(now) % 2)  # a live sensor's: a constant one is stuck (a detector fires)
            value = (-10.0 if breaching["on"] else -20.0) + wobble
            await rig.send_readings(
                [reading(BREACHING, value, now)] + [reading(d, -20.0 + wobble, now) for d in NORMAL]
            )
            await asyncio.sleep(0.25)

    task = asyncio.create_task(publish())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _store_incidents(settings: ThermoflowSettings) -> list[tuple[str, str, str]]:
    with db.connect(settings) as conn:
        rows = conn.execute(
            "SELECT incident_id, device_id, status FROM incidents ORDER BY opened_at"
        ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def _transitions(receiver: WebhookReceiver) -> list[tuple[str, str, str]]:
    return [(d.json["incident_id"], d.json["device_id"], d.json["transition"]) for d in receiver.deliveries]


async def test_a_stopped_processor_does_not_make_incidents_resolve_and_refire(
    rig: ProcessorRig, settings: ThermoflowSettings
) -> None:
    db.migrate(settings)
    thresholds_only_rules(rig.rules_file)  # the jump back to normal would also be a rate incident
    receiver = WebhookReceiver()
    await receiver.start()
    config = _alerts_settings(settings, rig, receiver)
    breaching = {"on": True}
    worker = rig.start(**PROCESSOR_ENV)
    try:
        async with (
            running(AlertStore(config).run),
            running(Notifier(config).run),
            publishing(rig, breaching),
        ):

            async def fired() -> bool:
                stored = await asyncio.to_thread(_store_incidents, settings)
                return any(t[2] == "fire" for t in _transitions(receiver)) and bool(stored)

            await eventually(fired, timeout=90, what="the incident fired and stored")
            assert worker.stop() == 0
            await asyncio.sleep(PROCESSOR_DOWN_S)  # readings pile up in Kafka; the clock runs on
            # Neither side may have resolved anything: nothing says the readings were processed.
            assert [t for t in _transitions(receiver) if t[2] == "resolve"] == []
            assert [s for _, _, s in await asyncio.to_thread(_store_incidents, settings)] == ["firing"]

            rig.start(**PROCESSOR_ENV)  # works off the backlog, then keeps up
            await asyncio.sleep(8.0)  # well past the backlog: the device still breaches
            breaching["on"] = False

            async def resolved() -> bool:
                stored = await asyncio.to_thread(_store_incidents, settings)
                sent = [t for t in _transitions(receiver) if t[2] == "resolve"]
                return bool(sent) and bool(stored) and all(s == "resolved" for _, _, s in stored)

            await eventually(resolved, timeout=60, what="the incident resolved on both sides")
            await asyncio.sleep(2 * RESOLVE_AFTER)  # a wrong re-fire would show up now
    finally:
        await receiver.stop()

    stored = _store_incidents(settings)
    sent = _transitions(receiver)
    assert [(d, s) for _, d, s in stored] == [(BREACHING, "resolved")], stored
    assert [(d, t) for _, d, t in sent] == [(BREACHING, "fire"), (BREACHING, "resolve")], sent
    assert {i for i, _, _ in stored} == {i for i, _, _ in sent}
