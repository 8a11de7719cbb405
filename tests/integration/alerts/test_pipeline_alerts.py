"""The pipeline alerting on itself, on real Kafka and PostgreSQL: the notifier raises a ``pipeline``
incident when dead letters accumulate, a consumer group lags, or a channel's breaker stays open,
the alert store records it, the notifier notifies it like a warm freezer, and the incident
resolves once the trouble is over."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiokafka import TopicPartition

from tests.conftest import unique_name
from tests.integration.alerts.helpers import eventually, produce, running
from tests.integration.alerts.servers import WebhookReceiver
from tests.support.fakes import make_alert
from thermoflow import db, kafka
from thermoflow.alerts.notifier import Notifier
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.alerts.store import AlertStore
from thermoflow.settings import ThermoflowSettings

SECRET = "webhook-shared-secret"


def pipeline_settings(settings: ThermoflowSettings, **overrides: Any) -> AlertsSettings:
    """A topic, groups and state of this test's own; quick checks over a short window; every
    pipeline alert off unless the test turns it on."""
    return AlertsSettings(
        **{
            **settings.model_dump(),
            "database_url": settings.database_dsn,
            "alerts_topic": unique_name("alerts"),
            "deadletter_topic": unique_name("dlq"),
            "store_group": unique_name("store"),
            "notify_group": unique_name("notify"),
            "notifier_state_topic": unique_name("state"),
            "store_batch_wait": 0.1,
            "notify_log": False,
            "webhook_secret": SECRET,
            "pipeline_check_interval": 0.5,
            "pipeline_alert_window": 3.0,
            "deadletter_rate_alert": 0,
            "consumer_lag_alert": 0,
            "breaker_open_alert": 0,
            **overrides,
        }
    )


def pipeline_incidents(settings: ThermoflowSettings) -> list[tuple[str, str, str, float]]:
    """The ``pipeline`` device's incidents: (kind, rule_id, status, peak_value), oldest first."""
    with db.connect(settings) as conn:
        rows = conn.execute(
            "SELECT kind, rule_id, status, peak_value FROM incidents WHERE device_id = 'pipeline'"
            " ORDER BY opened_at"
        ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]


async def until_status(settings: ThermoflowSettings, kind: str, status: str, *, timeout: float = 60) -> None:
    async def check() -> bool:
        found = await asyncio.to_thread(pipeline_incidents, settings)
        return any(k == kind and s == status for k, _, s, _ in found)

    await eventually(check, timeout=timeout, what=f"a {status} {kind} incident of device pipeline")


def notified(receiver: WebhookReceiver) -> list[tuple[str, str, str]]:
    """(device_id, condition, transition) of each webhook delivery."""
    bodies = [msgspec.json.decode(r.body) for r in receiver.requests]
    return [(b["device_id"], b["condition"], b["transition"]) for b in bodies]


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


async def test_dead_letters_accumulating_open_a_pipeline_incident_that_resolves_when_they_stop(
    settings: ThermoflowSettings, webhook: WebhookReceiver
) -> None:
    config = pipeline_settings(settings, deadletter_rate_alert=60.0, webhook_url=webhook.url)
    await kafka.ensure_topics(config, {config.alerts_topic: 1, config.deadletter_topic: 1})
    async with running(AlertStore(config).run), running(Notifier(config).run):
        # Garbage on the alerts topic: the store and the notifier dead-letter each record (stage
        # alerts), 40 dead letters in a 3 s window: 800 a minute, far above 60.
        await produce(config, config.alerts_topic, [b"not an alert"] * 20)
        await until_status(config, "deadletter_rate", "firing")
        await until_status(config, "deadletter_rate", "resolved")  # none since: the rate falls to 0

    [(kind, rule_id, status, peak)] = pipeline_incidents(config)
    assert (kind, rule_id, status) == (
        "deadletter_rate",
        f"deadletter-rate/{config.deadletter_topic}",
        "resolved",
    )
    assert peak > 60.0

    # Told the way a warm freezer is: one fire, one resolve, on the webhook.
    async def both_sent() -> bool:
        return len(notified(webhook)) >= 2

    await eventually(both_sent, what="the fire and resolve notifications")
    assert notified(webhook) == [
        ("pipeline", "deadletter_rate", "fire"),
        ("pipeline", "deadletter_rate", "resolve"),
    ]


async def test_a_lagging_group_opens_an_incident_that_a_restarted_notifier_resolves_once_caught_up(
    settings: ThermoflowSettings, new_topic: Callable[..., str], webhook: WebhookReceiver
) -> None:
    group, backlog = unique_name("laggard"), new_topic("backlog")
    config = pipeline_settings(
        settings, consumer_lag_alert=100, consumer_lag_groups=group, webhook_url=webhook.url
    )
    await kafka.ensure_topics(config, {config.alerts_topic: 1, config.deadletter_topic: 1})
    events = [make_alert(f"d-{i}", 1_764_218_400.0 + i) for i in range(500)]
    await kafka.produce_events(config, backlog, events)
    laggard = kafka.consumer(config, group_id=group)
    await laggard.start()
    tp = TopicPartition(backlog, 0)

    async def told(count: int) -> None:
        async def check() -> bool:
            return len(notified(webhook)) >= count

        await eventually(check, what=f"{count} notification(s)")

    try:
        laggard.assign([tp])
        await laggard.commit({tp: 0})  # the group has read nothing of 500 records
        async with running(AlertStore(config).run):
            async with running(Notifier(config).run):
                await until_status(config, "consumer_lag", "firing")
                await told(1)
            # The notifier that raised it is gone; the group catches up meanwhile; the next
            # notifier knows the incident from the state topic and ends it.
            await laggard.commit({tp: 500})
            async with running(Notifier(config).run):
                await until_status(config, "consumer_lag", "resolved")
                await told(2)
    finally:
        await laggard.stop()
    [(kind, rule_id, status, peak)] = pipeline_incidents(config)
    assert (kind, rule_id, status, peak) == ("consumer_lag", f"consumer-lag/{group}", "resolved", 500.0)
    assert notified(webhook) == [
        ("pipeline", "consumer_lag", "fire"),
        ("pipeline", "consumer_lag", "resolve"),
    ]


async def test_a_channel_whose_breaker_stays_open_opens_an_incident_resolved_after_the_channel_recovers(
    settings: ThermoflowSettings,
) -> None:
    # A port bound here and not listening: every send is refused, and no other socket can take it
    # before the receiver comes back on it.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    config = pipeline_settings(
        settings, webhook_url=f"http://127.0.0.1:{port}/hook", breaker_open_alert=2.0,
        breaker_failures=1, breaker_reset=0.5, notify_retries=1, notify_timeout=2.0,
    )  # fmt: skip
    await kafka.ensure_topics(config, {config.alerts_topic: 1, config.deadletter_topic: 1})
    recovered: list[dict[str, Any]] = []
    with closed:
        await _break_and_recover(config, closed, recovered)
    [(kind, rule_id, status, peak)] = pipeline_incidents(config)
    assert (kind, rule_id, status) == ("breaker_open", "breaker-open/webhook", "resolved")
    assert peak >= 2.0
    assert recovered, "the channel delivered again"


async def _break_and_recover(config: AlertsSettings, closed: socket.socket, recovered: list[Any]) -> None:
    async with running(AlertStore(config).run), running(Notifier(config).run):
        await produce(config, config.alerts_topic, [make_alert("freezer-1", time.time())])
        await until_status(config, "breaker_open", "firing")

        # The receiver comes back on the same port; new alerts keep coming, and the first one the
        # half-open breaker lets through closes it.
        async def hook(request: web.Request) -> web.Response:
            recovered.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        closed.listen()
        await web.SockSite(runner, closed).start()
        try:

            async def resolved() -> bool:
                found = await asyncio.to_thread(pipeline_incidents, config)
                if any(s == "resolved" for _, _, s, _ in found):
                    return True
                await produce(config, config.alerts_topic, [make_alert(unique_name("dev"), time.time())])
                await asyncio.sleep(0.5)
                return False

            await eventually(resolved, what="the breaker_open incident resolved")
        finally:
            await runner.cleanup()
