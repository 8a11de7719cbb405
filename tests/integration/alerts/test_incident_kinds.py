"""The detectors' conditions in the alert store and the notifier, on real Kafka and PostgreSQL:
one open incident per (device, rule, kind), offline incidents that outlast ``resolve_after`` and
end on their clear, replayed clears that change nothing, bad clears dead-lettered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import unique_name
from tests.integration.alerts.helpers import eventually, running
from tests.support.fakes import FakeClock, RecordingChannel, RecordingDeadLetters, make_alert
from tests.support.topics import read_topic
from thermoflow import db, kafka
from thermoflow.alerts.delivery import Dispatcher, RetryPolicy
from thermoflow.alerts.lifecycle import Policy
from thermoflow.alerts.notifier import Notifier
from thermoflow.alerts.queries import list_incidents
from thermoflow.alerts.routing import LogRoute, Routes
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.alerts.store import AlertStore, store_batch, sweep
from thermoflow.events import (
    CLEAR_HEADERS,
    WATERMARK_HEADERS,
    AlertEvent,
    Clear,
    Condition,
    Severity,
    Watermark,
    encode,
    new_alert,
    parse_dead_letter_headers,
    stable_id,
)
from thermoflow.settings import ThermoflowSettings

POLICY = Policy(resolve_after=60.0, repeat_interval=3_600.0)
RULE = "freezer-too-warm"  # make_alert's rule
T0 = 1_764_218_400.0


def detected(
    device_id: str,
    condition: Condition,
    ts: float,
    *,
    value: float,
    threshold: float,
    severity: Severity = "warning",
) -> AlertEvent:
    return new_alert(
        device_id=device_id, metric="temperature", rule_id=RULE, severity=severity, condition=condition,
        threshold=threshold, value=value, reading_ts=ts, detected_at=ts + 1.0,
    )  # fmt: skip


def offline(
    device_id: str, last_reading: float, *, silent: float = 31.0, severity: Severity = "warning"
) -> AlertEvent:
    return detected(device_id, "offline", last_reading, value=silent, threshold=30.0, severity=severity)


def clear(device_id: str, *, since: float, cleared_at: float) -> Clear:
    return Clear(
        device_id=device_id, rule_id=RULE, condition="offline", since=since, cleared_at=cleared_at,
        detected_at=cleared_at + 0.2,
    )  # fmt: skip


def watermark(event_time: float) -> Watermark:
    return Watermark(
        source="thresholds", topic="readings", partition=0, partitions=1, event_time=event_time,
        emitted_at=event_time,
    )  # fmt: skip


Record = AlertEvent | Clear | Watermark | tuple[bytes, list[tuple[str, bytes]]]


async def produce(settings: ThermoflowSettings, topic: str, records: list[Record]) -> None:
    """Send records as the processors do: alerts and clears keyed by device, with their headers."""
    producer = kafka.producer(settings)
    await producer.start()
    try:
        futures = []
        for record in records:
            if isinstance(record, tuple):
                value, headers, key = record[0], record[1], b"bad"
            elif isinstance(record, Watermark):
                value, headers, key = encode(record), WATERMARK_HEADERS, None
            else:
                headers = CLEAR_HEADERS if isinstance(record, Clear) else []
                value, key = encode(record), record.device_id.encode()
            futures.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _incidents(settings: ThermoflowSettings) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """(device, kind): [(incident_id, status, severity, peak, resolved_at, updated_at)], oldest first."""
    found: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    with db.connect(settings) as conn:
        for row in conn.execute(
            "SELECT device_id, kind, incident_id, status, severity, peak_value,"
            " extract(epoch FROM resolved_at)::float8, updated_at FROM incidents ORDER BY opened_at, kind"
        ):
            found.setdefault((row[0], row[1]), []).append(tuple(row[2:]))
    return found


async def test_the_store_keeps_an_incident_per_kind_and_ends_offline_ones_only_on_their_clear(
    settings: ThermoflowSettings,
) -> None:
    db.migrate(settings)
    conn = await db.connect_async(settings)
    try:
        await store_batch(
            conn,
            alerts=[
                make_alert("f", T0),
                detected("f", "stuck", T0, value=75.0, threshold=60.0),
                offline("g", T0),
                make_alert("f", T0 + 10),
                detected("f", "stuck", T0 + 10, value=85.0, threshold=60.0),
            ],
            policy=POLICY,
        )
        opened = _incidents(settings)
        assert {key: [r[1] for r in rows] for key, rows in opened.items()} == {
            ("f", "threshold"): ["firing"], ("f", "stuck"): ["firing"], ("g", "offline"): ["firing"],
        }  # fmt: skip
        assert opened[("f", "threshold")][0][0] == stable_id("f", RULE, repr(T0), size=12)  # the id of old
        assert opened[("f", "stuck")][0][3] == 85.0

        # The pipeline watermark goes ten resolve_afters on: thresholds and stuck resolve, offline not.
        assert await sweep(conn, watermarks={0: T0 + 600}, partitions=1, policy=POLICY) == 2
        # Worse news of the same silence escalates it; a clear of an older silence ends nothing.
        await store_batch(
            conn,
            alerts=[
                offline("g", T0, silent=900.0, severity="critical"),
                clear("g", since=T0 - 500, cleared_at=T0 - 1),
            ],
            policy=POLICY,
        )
        assert await sweep(conn, watermarks={0: T0 + 6_000}, partitions=1, policy=POLICY) == 0
        [still] = _incidents(settings)[("g", "offline")]
        assert still[1:4] == ("firing", "critical", 900.0)

        ended = await store_batch(conn, alerts=[clear("g", since=T0, cleared_at=T0 + 950)], policy=POLICY)
        assert ended.incidents_changed == 1
        [resolved] = _incidents(settings)[("g", "offline")]
        assert resolved[0] == still[0] and resolved[1] == "resolved" and resolved[4] == T0 + 950

        replayed = await store_batch(
            conn, alerts=[offline("g", T0), clear("g", since=T0, cleared_at=T0 + 950)], policy=POLICY
        )
        assert (replayed.inserted, replayed.incidents_changed) == (0, 0)
        assert _incidents(settings)[("g", "offline")] == [resolved]  # not even rewritten

        # The next silence, after readings came back, is a new incident.
        await store_batch(conn, alerts=[offline("g", T0 + 2_000)], policy=POLICY)
        assert [r[1] for r in _incidents(settings)[("g", "offline")]] == ["resolved", "firing"]
    finally:
        await conn.close()
    with db.connect(settings) as sync:
        rows = {(r.device_id, r.kind): r for r in list_incidents(sync, open_only=True)}
    assert rows[("g", "offline")].condition == "offline" and rows[("g", "offline")].threshold == 30.0


def test_the_migration_backfills_threshold_and_keeps_one_open_incident_per_kind(
    settings: ThermoflowSettings,
) -> None:
    before = [m for m in db.available_migrations() if m.version < "030"]
    with db.connect(settings) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz DEFAULT now())"
        )
        for migration in before:
            conn.execute(migration.sql.encode())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,))
        conn.execute(
            "INSERT INTO incidents (incident_id, device_id, rule_id, metric, condition, threshold, severity,"
            " status, opened_at, last_breach_at, peak_value, breach_count)"
            " VALUES ('old', 'f', 'r', 'temperature', 'above', -10, 'warning', 'firing', now(), now(), -4, 1)"
        )
        conn.commit()
    assert "030_incident_kinds" in db.migrate(settings)

    insert = (
        "INSERT INTO incidents (incident_id, device_id, rule_id, kind, metric, condition, threshold,"
        " severity, status, opened_at, last_breach_at, peak_value, breach_count)"
        " VALUES (%s, 'f', 'r', %s, 'temperature', %s, 30, 'warning', 'firing', now(), now(), 45, 1)"
    )
    with db.connect(settings) as conn:
        assert conn.execute("SELECT kind FROM incidents WHERE incident_id = 'old'").fetchone() == (
            "threshold",
        )
        conn.execute(insert, ("stuck-1", "stuck", "stuck"))  # beside the open threshold incident
        conn.commit()
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("stuck-2", "stuck", "stuck"))
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(insert, ("mixed", "threshold", "offline"))  # a kind that is not its condition's
        conn.rollback()


def _store_settings(settings: ThermoflowSettings, topic: str, **overrides: Any) -> AlertsSettings:
    return AlertsSettings(**{
        **settings.model_dump(), "database_url": settings.database_dsn, "alerts_topic": topic,
        "store_group": unique_name("store"), "notify_group": unique_name("notify"),
        "notifier_state_topic": unique_name("state"), "notify_log": False, "store_batch_wait": 0.1,
        **overrides,
    })  # fmt: skip


BAD_CLEAR = (b'{"device_id": "g", "rule_id": "freezer-too-warm", "condition": "offline"}', CLEAR_HEADERS)


async def test_the_store_on_kafka_resolves_offline_on_its_clear_and_dead_letters_a_bad_clear(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    topic, deadletter = new_topic("alerts"), new_topic("dlq")
    config = _store_settings(settings, topic, deadletter_topic=deadletter, sweep_interval=0.1)
    store = AlertStore(config, clock=FakeClock())
    async with running(store.run):
        await produce(
            settings, topic, [offline("g", T0), make_alert("f", T0), watermark(T0 + 600), BAD_CLEAR]
        )

        async def threshold_resolved() -> bool:
            return [r[1] for r in _incidents(settings).get(("f", "threshold"), [])] == ["resolved"]

        await eventually(threshold_resolved, what="the threshold incident resolved by the watermark")
        assert [r[1] for r in _incidents(settings)[("g", "offline")]] == ["firing"]

        await produce(settings, topic, [clear("g", since=T0, cleared_at=T0 + 700), make_alert("h", T0 + 700)])

        async def offline_resolved() -> bool:
            return [r[1] for r in _incidents(settings).get(("g", "offline"), [])] == ["resolved"]

        await eventually(offline_resolved, what="the offline incident resolved by its clear")
    [(_, _, _, _, resolved_at, _)] = _incidents(settings)[("g", "offline")]
    assert resolved_at == T0 + 700
    [letter] = await read_topic(settings, deadletter, at_least=1, extra_polls=0)
    reason = parse_dead_letter_headers(letter.headers)
    assert letter.value == BAD_CLEAR[0]
    assert reason.stage == "alerts" and "invalid clear" in reason.error and "since" in reason.error
    assert reason.source == f"{topic}/0/3"


async def test_the_notifier_resolves_offline_only_on_its_clear_once_and_keeps_kinds_apart(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    topic, deadletter = new_topic("alerts"), new_topic("dlq")
    config = _store_settings(settings, topic, deadletter_topic=deadletter)
    channel = RecordingChannel("rec")
    dispatcher = Dispatcher(
        {"rec": channel}, Routes(channels={"rec": LogRoute(type="log")}),
        dead_letters=RecordingDeadLetters(), retry=RetryPolicy(attempts=1, backoff=0.01, backoff_max=0.01),
    )  # fmt: skip

    def sent() -> list[tuple[str, str, str]]:
        return [(n.device_id, n.condition, n.transition) for n in channel.sent]

    async def until(count: int, what: str) -> None:
        async def check() -> bool:
            return len(channel.sent) >= count

        await eventually(check, what=what)

    async with running(Notifier(config, dispatcher=dispatcher).run):
        await produce(
            settings, topic,
            [make_alert("f", T0), detected("f", "stuck", T0, value=75.0, threshold=60.0), offline("g", T0),
             watermark(T0 + 600), BAD_CLEAR],
        )  # fmt: skip
        await until(5, "three fires and two resolves")
        await produce(
            settings, topic, [offline("g", T0, silent=900, severity="critical"), watermark(T0 + 6_000)]
        )
        await until(6, "the escalation")
        await produce(settings, topic, [clear("g", since=T0, cleared_at=T0 + 950)])
        await until(7, "the resolve of the offline incident")
        # Replayed: the alerts and the clear of that silence; then a new device, to know all was read.
        await produce(
            settings,
            topic,
            [offline("g", T0), clear("g", since=T0, cleared_at=T0 + 950), make_alert("z", T0)],
        )
        await until(8, "the new device's fire")

    assert sent() == [
        ("f", "above", "fire"), ("f", "stuck", "fire"), ("g", "offline", "fire"),
        ("f", "above", "resolve"), ("f", "stuck", "resolve"),
        ("g", "offline", "escalate"),
        ("g", "offline", "resolve"),
        ("z", "above", "fire"),
    ]  # fmt: skip
    offline_resolve = channel.sent[6]
    assert offline_resolve.resolved_at == T0 + 950
    assert offline_resolve.incident_id == channel.sent[2].incident_id
    assert channel.sent[1].incident_id != channel.sent[0].incident_id
    [letter] = await read_topic(settings, deadletter, at_least=1, extra_polls=0)
    assert "invalid clear" in parse_dead_letter_headers(letter.headers).error
