"""Acknowledging an incident on real Kafka and PostgreSQL: the store and the notifier running, a
real webhook receiving. The notifier tells the acknowledgement once, with who and the note, and
stops repeating; a double click is one acknowledgement; the state survives a restart; a
malformed ack record is a dead letter, and the partition goes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from tests.conftest import unique_name
from tests.integration.alerts.helpers import eventually, produce, running
from tests.integration.alerts.servers import WebhookReceiver
from tests.support.fakes import make_alert
from tests.support.topics import read_topic
from thermoflow import db, kafka
from thermoflow.alerts.ack import acknowledge_incident, acknowledge_incident_async
from thermoflow.alerts.notifier import Notifier
from thermoflow.alerts.queries import AckError, InvalidAck, list_incidents
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.alerts.store import AlertStore
from thermoflow.errors import ServiceError
from thermoflow.events import ACK_HEADERS, is_ack, parse_dead_letter_headers
from thermoflow.settings import ThermoflowSettings

SECRET = "webhook-shared-secret"
REPEAT = 2.0  # seconds between repeats while an incident fires unacknowledged


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


def _config(
    settings: ThermoflowSettings, topic: str, webhook: WebhookReceiver, **overrides: Any
) -> AlertsSettings:
    return AlertsSettings(
        **{
            **settings.model_dump(),
            "database_url": settings.database_dsn,
            "alerts_topic": topic,
            "store_group": unique_name("store"),
            "notify_group": unique_name("notify"),
            "notifier_state_topic": unique_name("state"),
            "deadletter_topic": unique_name("dlq"),
            "notify_log": False,
            "webhook_url": webhook.url,
            "webhook_secret": SECRET,
            "repeat_interval": REPEAT,
            "resolve_after": 3_600.0,  # nothing resolves during the test
            "sweep_interval": 0.2,
            "store_batch_wait": 0.1,
            **overrides,
        }
    )


def _transitions(webhook: WebhookReceiver) -> list[dict[str, Any]]:
    return [msgspec.json.decode(r.body) for r in webhook.requests]


def _named(webhook: WebhookReceiver, transition: str) -> list[dict[str, Any]]:
    return [b for b in _transitions(webhook) if b["transition"] == transition]


async def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    async def probe() -> bool:
        return check()

    await eventually(probe, timeout=timeout, what=what)


def _incident(settings: ThermoflowSettings, device_id: str) -> Any:
    with db.connect(settings) as conn:
        rows = list_incidents(conn, device_id=device_id)
    return rows[0] if rows else None


async def test_an_ack_with_a_note_is_told_once_and_ends_the_repeats_across_a_restart(
    settings: ThermoflowSettings, new_topic: Callable[..., str], webhook: WebhookReceiver
) -> None:
    db.migrate(settings)
    topic = new_topic("alerts", partitions=2)
    config = _config(settings, topic, webhook)
    now = time.time()
    async with running(AlertStore(config).run), running(Notifier(config).run):
        await produce(settings, topic, [make_alert("freezer-1", now), make_alert("freezer-2", now)])
        await _until(lambda: len(_named(webhook, "fire")) == 2, "both incidents fired")
        await eventually(
            lambda: asyncio.to_thread(lambda: _incident(settings, "freezer-1") is not None),
            what="the store has the incident",
        )
        # It repeats while nobody acknowledges it: what the ack must stop.
        await _until(lambda: len(_named(webhook, "repeat")) >= 2, "a repeat of each incident")

        incident = await asyncio.to_thread(_incident, settings, "freezer-1")
        note = "door left open after the delivery;\nclosed it, watching the temperature"
        # A double click (or two operators at once): two acknowledgements at once are one.
        clicks = await asyncio.gather(
            acknowledge_incident_async(config, incident.incident_id, by="ana", note=note),
            acknowledge_incident_async(config, incident.incident_id, by="ana", note=note + " (again)"),
        )
        assert sorted(c.new for c in clicks) == [False, True]
        [winner] = [c.incident for c in clicks if c.new]
        assert {(c.incident.acknowledged_by, c.incident.ack_note) for c in clicks} == {
            ("ana", winner.ack_note)
        }
        assert winner.ack_note in (note, note + " (again)")

        await _until(lambda: len(_named(webhook, "acknowledged")) == 1, "the acknowledgement told")
        acked_at = time.time()
        await asyncio.sleep(3 * REPEAT)  # time for any wrong repeat (or second ack) to show up

    def after_ack(device_id: str) -> list[str]:
        return [
            b["transition"]
            for r, b in zip(webhook.requests, _transitions(webhook), strict=True)
            if b["device_id"] == device_id and r.at > acked_at
        ]

    [told] = _named(webhook, "acknowledged")
    assert (told["device_id"], told["incident_id"]) == ("freezer-1", incident.incident_id)
    assert (told["acknowledged_by"], told["note"]) == ("ana", winner.ack_note)
    assert told["acknowledged_at"] == incident_ack_time(settings, "freezer-1")
    assert after_ack("freezer-1") == []  # no more repeats
    assert "repeat" in after_ack("freezer-2")  # the other incident, unacknowledged, still repeats
    assert len(set(webhook.keys())) == len(webhook.requests)  # every notification once
    stored = await asyncio.to_thread(_incident, settings, "freezer-1")
    assert (stored.status, stored.acknowledged_by, stored.ack_note) == (
        "acknowledged",
        "ana",
        winner.ack_note,
    )
    acks = [r for r in await read_topic(settings, topic, at_least=3) if is_ack(r.headers)]
    assert len(acks) == 1  # the double click sent one record

    # A restarted notifier (its state from the compacted topic, the ack record replayed or not)
    # neither repeats the acknowledged incident nor tells the acknowledgement again.
    restarted = time.time()
    async with running(Notifier(config).run):
        await _until(
            lambda: any(r.at > restarted for r in webhook.requests), "the other incident's next repeat"
        )
        await asyncio.sleep(2 * REPEAT)
    late = [b for r, b in zip(webhook.requests, _transitions(webhook), strict=True) if r.at > restarted]
    assert {b["device_id"] for b in late} == {"freezer-2"}
    assert len(_named(webhook, "acknowledged")) == 1

    # Acknowledging it again later changes nothing and sends nothing.
    again = await asyncio.to_thread(acknowledge_incident, config, incident.incident_id, by="carl", note="")
    assert not again.new and again.incident.acknowledged_by == "ana"
    assert len([r for r in await read_topic(settings, topic, at_least=3) if is_ack(r.headers)]) == 1


def incident_ack_time(settings: ThermoflowSettings, device_id: str) -> float:
    stored = _incident(settings, device_id)
    assert stored is not None and stored.acknowledged_at is not None
    return float(stored.acknowledged_at.timestamp())


async def test_a_malformed_ack_record_is_a_dead_letter_with_its_reason_and_the_partition_goes_on(
    settings: ThermoflowSettings, new_topic: Callable[..., str], webhook: WebhookReceiver
) -> None:
    db.migrate(settings)
    topic = new_topic("alerts")
    config = _config(settings, topic, webhook)
    bad = msgspec.json.encode({"incident_id": "x", "device_id": "freezer-1", "note": "\x1b[2J" * 400})
    producer = kafka.producer(settings)
    await producer.start()
    try:
        sent = await producer.send(topic, bad, key=b"freezer-1", headers=list(ACK_HEADERS))
        await sent
    finally:
        await producer.stop()
    await produce(settings, topic, [make_alert("freezer-1", time.time())])  # behind the bad record
    async with running(AlertStore(config).run), running(Notifier(config).run):
        await _until(lambda: len(_named(webhook, "fire")) == 1, "the alert behind the bad ack fired")
        await eventually(
            lambda: asyncio.to_thread(lambda: _incident(settings, "freezer-1") is not None),
            what="the store stored the alert behind it",
        )
        letters = await read_topic(settings, config.deadletter_topic, at_least=2)
    # The store and the notifier each read the topic, and each sets the bad record aside.
    assert len(letters) == 2 and all(r.value == bad for r in letters)
    for letter in letters:
        reason = parse_dead_letter_headers(letter.headers)
        assert reason.stage == "alerts" and reason.source == f"{topic}/0/0"
        assert reason.error.startswith("invalid ack: ")


def test_an_ack_refused_for_its_note_for_a_resolved_incident_or_without_kafka_stores_nothing(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    db.migrate(settings)
    with db.connect(settings) as conn:
        conn.execute(
            "INSERT INTO incidents (incident_id, device_id, rule_id, kind, metric, condition, threshold,"
            " severity, status, opened_at, last_breach_at, peak_value, breach_count, resolved_at) VALUES"
            " ('open-1', 'freezer-1', 'r', 'threshold', 'temperature', 'above', -10, 'warning', 'firing',"
            "  now(), now(), -4, 1, NULL),"
            " ('done-1', 'freezer-2', 'r', 'threshold', 'temperature', 'above', -10, 'warning', 'resolved',"
            "  now(), now(), -4, 1, now())"
        )
        conn.commit()
    config = AlertsSettings(
        **{
            **settings.model_dump(),
            "database_url": settings.database_dsn,
            "alerts_topic": new_topic("alerts"),
        }
    )
    with pytest.raises(InvalidAck, match="at most 1,000"):
        acknowledge_incident(config, "open-1", by="ana", note="x" * 1_001)
    with pytest.raises(InvalidAck, match=r"control character U\+001B"):
        acknowledge_incident(config, "open-1", by="ana", note="\x1b]0;pwned\x07")
    with pytest.raises(AckError, match="resolved: only a firing incident can be acknowledged"):
        acknowledge_incident(config, "done-1", by="ana")
    with pytest.raises(AckError, match="no incident 'nope'"):
        acknowledge_incident(config, "nope", by="ana")
    # Kafka unreachable: the notifier could not hear of it, so nothing is stored.
    unreachable = config.model_copy(update={"kafka_bootstrap": "127.0.0.1:9"})
    with pytest.raises(ServiceError, match="cannot reach Kafka"):
        acknowledge_incident(unreachable, "open-1", by="ana", note="try")
    stored = _incident(settings, "freezer-1")
    assert (stored.status, stored.acknowledged_by, stored.ack_note) == ("firing", None, None)
    done = acknowledge_incident(config, "open-1", by="ana", note="retried")
    assert done.new and (done.incident.status, done.incident.ack_note) == ("acknowledged", "retried")
