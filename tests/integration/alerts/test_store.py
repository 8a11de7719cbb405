"""The alert store against real Kafka and PostgreSQL: once per alert, incidents right, replays inert."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.conftest import ROOT, unique_name
from tests.integration.alerts.helpers import Member, TcpProxy, eventually, produce, running, until_members
from tests.support.fakes import FakeClock, make_alert
from thermoflow import db
from thermoflow.alerts.kafka_io import partition_of
from thermoflow.alerts.lifecycle import Policy
from thermoflow.alerts.queries import AckError, acknowledge, list_incidents
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.alerts.store import AlertStore, store_batch, sweep
from thermoflow.events import AlertEvent, Severity, encode, parse_dead_letter_headers
from thermoflow.settings import ThermoflowSettings

# The storage tests: once on plain PostgreSQL, once on TimescaleDB (tests/conftest.py).
pytestmark = pytest.mark.both_databases

POLICY = Policy(resolve_after=60.0, repeat_interval=600.0)


def _alerts_settings(settings: ThermoflowSettings, topic: str, **overrides: Any) -> AlertsSettings:
    values = {
        **settings.model_dump(),
        "database_url": settings.database_dsn,
        "alerts_topic": topic,
        "store_group": unique_name("store"),
        **overrides,
    }
    return AlertsSettings(**values)


def _counts(settings: ThermoflowSettings) -> tuple[int, int, int, int]:
    """(alert events, incidents, open incidents, sum of breach counts)."""
    with db.connect(settings) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM alert_events), count(*),"
            " count(*) FILTER (WHERE status <> 'resolved'), coalesce(sum(breach_count), 0) FROM incidents"
        ).fetchone()
    assert row is not None
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def _device(d: int) -> str:
    """Ids as they come from outside: JSON's escapes (quotes, backslashes, control characters) and
    non-ASCII text, up to a character outside the BMP, must reach the database unchanged."""
    return "dev-0" if d == 0 else f"dev-{d}" if d < 3 else f'dev\t{d}\\with\n"odd" chars: Kühlraum ❄ 🧊'


def _scenario(devices: int = 4, steps: int = 30) -> list[AlertEvent]:
    """Each device breaches every 10 s; halfway through it turns critical; device 0 pauses 2 min."""
    alerts = []
    for step in range(steps):
        for d in range(devices):
            ts = 1_764_218_400.0 + step * 10 + (120 if d == 0 and step >= steps // 2 else 0)
            severity: Severity = "critical" if step >= steps // 2 else "warning"
            alerts.append(make_alert(_device(d), ts, severity=severity, value=float(step)))
    return alerts


async def test_duplicates_and_replays_store_one_row_each_and_count_right(
    settings: ThermoflowSettings,
) -> None:
    db.migrate(settings)
    alerts = _scenario()
    aconn = await db.connect_async(settings)
    try:
        # The batch carries duplicates; then the same events come again, split differently.
        first = await store_batch(aconn, alerts=alerts[:70] + alerts[:10], policy=POLICY)
        second = await store_batch(aconn, alerts=alerts[50:] + alerts[60:65], policy=POLICY)
        replay = await store_batch(aconn, alerts=list(reversed(alerts)), policy=POLICY)
    finally:
        await aconn.close()
    assert (first.inserted, first.duplicates) == (70, 10)
    assert (second.inserted, second.duplicates) == (50, 25)
    assert (replay.inserted, replay.duplicates, replay.incidents_changed) == (0, 120, 0)

    events, incidents, open_, breaches = _counts(settings)
    assert events == len(alerts) == breaches
    # dev-0's 120 s pause (> resolve_after) split it into two incidents; the others have one each.
    assert (incidents, open_) == (5, 4)
    with db.connect(settings) as conn:
        rows = list_incidents(conn)
    by_device: dict[str, list[Any]] = {}
    for row in rows:
        by_device.setdefault(row.device_id, []).append(row)
    assert set(by_device) == {_device(d) for d in range(4)}
    with db.connect(settings) as conn:
        stored = {row[0] for row in conn.execute("SELECT DISTINCT device_id FROM alert_events")}
    assert stored == set(by_device)
    assert sorted(r.status for r in by_device["dev-0"]) == ["firing", "resolved"]
    assert all(
        r.severity == "critical" and r.breach_count == 30 for d in ("dev-1", "dev-2") for r in by_device[d]
    )
    resolved = next(r for r in by_device["dev-0"] if r.status == "resolved")
    assert resolved.severity == "warning" and resolved.breach_count == 15
    assert (resolved.resolved_at - resolved.last_breach_at).total_seconds() == 60


async def test_sweep_resolves_quiet_incidents_on_the_injected_clock_and_ack_works(
    settings: ThermoflowSettings,
) -> None:
    db.migrate(settings)
    clock = FakeClock()
    conn = await db.connect_async(settings)
    try:
        await store_batch(
            conn, alerts=[make_alert("a", clock()), make_alert("b", clock() + 30)], policy=POLICY
        )
        with db.connect(settings) as sync:
            firing = {r.device_id: r for r in list_incidents(sync, open_only=True)}
            assert acknowledge(sync, firing["a"].incident_id, by="tester").status == "acknowledged"
        # The pipeline watermark (event time) decides; one alerts partition holds every device.
        assert await sweep(conn, watermarks={0: clock.advance(59)}, partitions=1, policy=POLICY) == 0
        assert await sweep(conn, watermarks={0: clock.advance(1)}, partitions=1, policy=POLICY) == 1  # "a"
        assert await sweep(conn, watermarks={0: clock.advance(30)}, partitions=1, policy=POLICY) == 1  # "b"
    finally:
        await conn.close()
    with db.connect(settings) as sync:
        assert list_incidents(sync, open_only=True) == []
        assert {r.device_id for r in list_incidents(sync, device_id="a")} == {"a"}
        with pytest.raises(AckError, match="resolved"):
            acknowledge(sync, firing["b"].incident_id, by="tester")


async def test_a_replayed_alert_inside_a_resolved_incident_opens_no_incident_and_a_later_one_does(
    settings: ThermoflowSettings,
) -> None:
    """After a rebalance the processors may cut re-read batches differently: an alert with a new
    id whose reading lies inside an incident already resolved is a replay (the notifier drops it
    too), so the store and the notifier keep the same incidents."""
    db.migrate(settings)
    conn = await db.connect_async(settings)
    try:
        await store_batch(conn, alerts=[make_alert("a", 1_000.0), make_alert("a", 1_010.0)], policy=POLICY)
        assert await sweep(conn, watermarks={0: 1_070.0}, partitions=1, policy=POLICY) == 1
        replay = await store_batch(conn, alerts=[make_alert("a", 1_005.0, value=6.0)], policy=POLICY)
        assert (replay.inserted, replay.incidents_changed) == (1, 0)  # the event is kept, no incident
        with db.connect(settings) as sync:
            (resolved,) = list_incidents(sync, device_id="a")
            assert resolved.status == "resolved" and resolved.breach_count == 2
        later = await store_batch(conn, alerts=[make_alert("a", 1_080.0)], policy=POLICY)
        assert later.incidents_changed == 1
    finally:
        await conn.close()
    with db.connect(settings) as sync:
        incidents = list_incidents(sync, device_id="a")
    assert sorted(i.status for i in incidents) == ["firing", "resolved"]


async def test_sweep_resolves_only_incidents_of_partitions_whose_watermark_has_passed(
    settings: ThermoflowSettings,
) -> None:
    db.migrate(settings)
    devices = [f"dev-{i}" for i in range(20)]
    on = {p: [d for d in devices if partition_of(d, partitions=2) == p] for p in (0, 1)}
    assert on[0] and on[1]
    conn = await db.connect_async(settings)
    try:
        await store_batch(conn, alerts=[make_alert(d, 1_000.0) for d in devices], policy=POLICY)
        # Partition 1's watermark is past the quiet period, partition 0's is not; no other is known.
        assert await sweep(conn, watermarks={0: 1_059.0, 1: 1_060.0}, partitions=2, policy=POLICY) == len(
            on[1]
        )
        assert await sweep(conn, watermarks={0: 1_060.0}, partitions=2, policy=POLICY) == len(on[0])
    finally:
        await conn.close()
    with db.connect(settings) as sync:
        assert all(r.status == "resolved" for r in list_incidents(sync))


async def test_store_consumes_kafka_dead_letters_garbage_and_survives_redelivery(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    topic, deadletter = new_topic("alerts", partitions=3), new_topic("dlq")
    config = _alerts_settings(settings, topic, deadletter_topic=deadletter, store_batch_wait=0.1)
    alerts = _scenario(devices=6, steps=20)
    await produce(settings, topic, [*alerts, b"not json", *alerts[:40]])  # garbage and redelivered events
    clock = FakeClock()  # the scenario's start: no incident is quiet long enough to resolve
    async with running(AlertStore(config, clock=clock).run):
        await eventually(lambda: _async(_counts(settings)[0] == len(alerts)), what="all events stored")
    # A second consumer group replays everything from the start: nothing changes.
    before = _counts(settings)
    replayer = AlertStore(config.model_copy(update={"store_group": unique_name("replay")}), clock=clock)
    async with running(replayer.run):
        replayed = len(alerts) + 40
        await eventually(
            lambda: _async(replayer.metrics.counter("alerts_duplicate") == replayed), what="the replay"
        )
    assert _counts(settings) == before
    assert before[0] == before[3] == len(alerts)

    from thermoflow import kafka

    consumer = kafka.consumer(settings, deadletter, group_id=unique_name("dlq"))
    await consumer.start()
    try:
        records: list[Any] = []
        for _ in range(20):
            records += [r for batch in (await consumer.getmany(timeout_ms=500)).values() for r in batch]
    finally:
        await consumer.stop()
    assert [r.value for r in records] == [b"not json"] * 2  # once per consumer group that read it
    letter = parse_dead_letter_headers(records[0].headers)
    assert (
        letter.stage == "alerts" and "invalid alert event" in letter.error and letter.source.startswith(topic)
    )


async def _async(value: bool) -> bool:
    return value


def test_store_killed_mid_batch_has_exact_counts_after_restart(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    topic = new_topic("alerts", partitions=2)
    start = time.time()  # event time near the wall clock: no incident is due to resolve during the test
    alerts = [make_alert(f"dev-{i % 50}", start + (i // 50) / 100) for i in range(60_000)]
    asyncio.run(produce(settings, topic, alerts))
    env = {
        **os.environ,
        "THERMOFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "THERMOFLOW_DATABASE_URL": settings.database_dsn,
        "THERMOFLOW_DATABASE_SCHEMA": settings.database_schema,
        "THERMOFLOW_ALERTS_TOPIC": topic,
        "THERMOFLOW_STORE_GROUP": unique_name("store"),
        "THERMOFLOW_STORE_BATCH_SIZE": "2000",
    }
    command = [sys.executable, "-m", "thermoflow", "alerts", "store"]

    def stored() -> int:
        try:
            return _counts(settings)[0]
        except psycopg.errors.UndefinedTable:
            return 0

    first = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while stored() == 0:
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            asyncio.run(asyncio.sleep(0.02))
    finally:
        first.kill()  # SIGKILL: no flush, no commit, mid-batch
        first.wait()
        if first.stderr:
            first.stderr.close()
    assert 0 < stored() < len(alerts), "the store was killed before it finished"

    second = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(1200):
            if stored() == len(alerts):
                break
            asyncio.run(asyncio.sleep(0.1))
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0  # a clean stop
    events, incidents, open_, breaches = _counts(settings)
    assert (events, breaches) == (len(alerts), len(alerts))
    assert (incidents, open_) == (50, 50)


async def test_a_database_outage_pauses_the_store_and_it_resumes_without_loss(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    db.migrate(settings)
    parts = urlsplit(settings.database_dsn)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    topic = new_topic("alerts")
    proxied = urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{proxy.port}"))
    config = _alerts_settings(settings, topic, database_url=proxied, store_batch_wait=0.1)
    now = time.time()
    alerts = [make_alert(f"dev-{i % 5}", now + i / 10) for i in range(400)]

    async def stored(n: int) -> bool:
        return _counts(settings)[0] == n

    try:
        async with running(AlertStore(config).run):
            await produce(settings, topic, alerts[:200])
            await eventually(lambda: stored(200), what="the first half stored")
            await proxy.cut()
            await produce(settings, topic, alerts[200:])
            await asyncio.sleep(3)  # the store retries against a dead database meanwhile
            assert _counts(settings)[0] == 200
            await proxy.restore()
            await eventually(lambda: stored(400), what="the second half stored after the outage")
    finally:
        await proxy.close()
    events, incidents, open_, breaches = _counts(settings)
    assert (events, breaches, incidents, open_) == (400, 400, 5, 5)


async def test_events_the_database_cannot_take_are_dead_lettered_and_the_rest_stored(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    """Produced straight onto the topic, as no processor should: a breach at ts 1e19 (the store
    crash-looped on DatetimeFieldOverflow), a NUL in a device id, and an event an operator's
    CHECK constraint refuses (found only by the database: the batch is split around it)."""
    db.migrate(settings)
    with db.connect(settings) as conn:
        conn.execute("ALTER TABLE alert_events ADD CONSTRAINT plausible CHECK (value < 1000)")
        conn.commit()
    topic, deadletter = new_topic("alerts", partitions=2), new_topic("dlq")
    config = _alerts_settings(settings, topic, deadletter_topic=deadletter, store_batch_wait=0.1)
    now = time.time()
    good = [make_alert(f"dev-{i % 5}", now + i / 10) for i in range(300)]
    bad = {
        "`reading_ts`": make_alert("dev-1", 1e19, severity="critical"),
        "`device_id`": make_alert("dev\x00nul", now),
        "plausible": make_alert("dev-2", now + 7.05, value=5000.0),
    }
    await produce(settings, topic, [*good[:150], *bad.values(), *good[150:]])
    store = AlertStore(config)
    async with running(store.run):
        await eventually(lambda: _async(_counts(settings)[0] == len(good)), what="the good events stored")
        await eventually(
            lambda: _async(store.metrics.counter("alerts_refused") == len(bad)), what="the refusals"
        )
    events, incidents, open_, breaches = _counts(settings)
    assert (events, breaches, incidents, open_) == (300, 300, 5, 5)

    from thermoflow import kafka

    consumer = kafka.consumer(settings, deadletter, group_id=unique_name("dlq"))
    await consumer.start()
    try:
        records: list[Any] = []
        for _ in range(10):
            records += [r for batch in (await consumer.getmany(timeout_ms=500)).values() for r in batch]
    finally:
        await consumer.stop()
    assert len(records) == len(bad)
    letters = {r.value: parse_dead_letter_headers(r.headers) for r in records}
    for field, alert in bad.items():
        letter = letters[encode(alert)]  # the original bytes
        assert field in letter.error and letter.stage == "alerts", letter.error
        topic_name, partition, offset = letter.source.rsplit("/", 2)
        assert topic_name == topic and int(partition) in (0, 1) and int(offset) >= 0


async def test_a_second_store_joins_and_leaves_mid_run_and_each_alert_is_stored_and_counted_once(
    settings: ThermoflowSettings, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """Alerts arrive in small batches (many commits) while a second store joins the group and
    later stops: two rebalances under load. Neither process crashes or restarts (before, a
    commit after the partition had moved raised IllegalStateError and ended the store), every
    alert is one row, and each is folded into its incident once (breach counts add up)."""
    topic = new_topic("alerts", partitions=4)
    start = time.time()  # event time near the wall clock: nothing resolves during the test
    devices = 200
    alerts = [make_alert(f"dev-{i % devices}", start + (i // devices) / 10) for i in range(12_000)]
    env = {
        **os.environ,
        "THERMOFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "THERMOFLOW_DATABASE_URL": settings.database_dsn,
        "THERMOFLOW_DATABASE_SCHEMA": settings.database_schema,
        "THERMOFLOW_ALERTS_TOPIC": topic,
        "THERMOFLOW_DEADLETTER_TOPIC": unique_name("dlq"),
        "THERMOFLOW_STORE_GROUP": unique_name("store"),
        "THERMOFLOW_STORE_BATCH_SIZE": "200",
        "THERMOFLOW_STORE_BATCH_WAIT": "0.1",
    }
    first = Member("store", env, instance=0, log_path=tmp_path / "first.log")
    second = Member("store", env, instance=1, log_path=tmp_path / "second.log")

    def stored() -> int:
        try:
            return _counts(settings)[0]
        except psycopg.errors.UndefinedTable:
            return 0

    leaving, left, fed_while_leaving = asyncio.Event(), asyncio.Event(), asyncio.Event()
    sent_while_leaving = 0

    async def feed() -> None:  # ~600 alerts/s for ~20 s: batches of every partition, ~10 commits/s
        nonlocal sent_while_leaving
        chunks = range(0, len(alerts), 150)
        for n, chunk in enumerate(chunks):
            if n == len(chunks) - 10:  # the last ten wait for the leave, however slow the machine
                await leaving.wait()
            await produce(settings, topic, alerts[chunk : chunk + 150])
            sent_while_leaving += leaving.is_set() and not left.is_set()
            if leaving.is_set():
                fed_while_leaving.set()
            await asyncio.sleep(0.25)

    async def until(check: Callable[[], bool], what: str, timeout: float = 90) -> None:
        async def probe() -> bool:
            assert first.alive(), first.log()  # neither crashes while it should run
            assert second.alive() or second.process is None or second.process.returncode == 0, second.log()
            return check()

        await eventually(probe, timeout=timeout, what=what)

    first.start()
    feeding = asyncio.create_task(feed())
    try:
        await until(lambda: stored() >= 500, "500 alerts from the first store")
        # A slow write across the join (a lock held elsewhere): the rebalance completes while
        # the first store has a batch in flight, whose partitions may go to the second.
        with db.connect(settings) as locker:
            locker.execute("LOCK TABLE alert_events IN EXCLUSIVE MODE")
            second.start()
            await until(lambda: bool(second.events("store_started")), "the second store to start")
            await asyncio.sleep(5)  # past a heartbeat: the group rebalances meanwhile
        await until_members(settings, env["THERMOFLOW_STORE_GROUP"], topic, 2)
        at_join = stored()
        await until(lambda: stored() >= at_join + 1500, "alerts stored by both")
        leaving.set()
        # The stop starts once alerts are on their way again, however slow the machine (a store
        # that stops faster than one produce would leave with none arriving).
        await asyncio.wait_for(fed_while_leaving.wait(), 60)
        assert await asyncio.to_thread(second.terminate) == 0, second.log()  # its last batch committed
        left.set()
        assert sent_while_leaving, "the second store must leave while alerts arrive"
        await feeding
        await until(lambda: stored() >= len(alerts), "every alert stored", timeout=120)
        assert first.alive(), first.log()  # never crashed, never restarted
        assert first.terminate() == 0, first.log()
    finally:
        feeding.cancel()
        first.close()
        second.close()
    assert (first.starts, second.starts) == (1, 1)
    events, incidents, open_, breaches = _counts(settings)
    assert (events, breaches) == (len(alerts), len(alerts))
    assert (incidents, open_) == (devices, devices)
    assert len(first.events("partitions_revoked")) >= 2, first.log()  # it went through both rebalances
    refused = len(first.events("offset_commit_refused")) + len(second.events("offset_commit_refused"))
    print(f"commits refused by a rebalance: {refused}")


async def _committed(settings: ThermoflowSettings, group: str, topic: str) -> int:
    """The offset ``group`` has committed on partition 0 of ``topic`` (0: none)."""
    from aiokafka import TopicPartition

    from thermoflow import kafka

    reader = kafka.consumer(settings, group_id=group)
    await reader.start()
    try:
        return int(await reader.committed(TopicPartition(topic, 0)) or 0)
    finally:
        await reader.stop()


async def test_the_store_commits_what_it_stored_at_most_every_alerts_commit_every_and_all_of_it_at_a_stop(
    settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    # Each commit costs the store about half a millisecond of CPU; at a steady fleet's rate the
    # processors' watermarks alone made a batch (and a commit) several times a second.
    topic = new_topic("alerts", partitions=1)
    config = _alerts_settings(settings, topic, alerts_commit_every=60.0)
    first, *later = _scenario(devices=2, steps=10)
    await produce(settings, topic, [first])
    async with running(AlertStore(config, clock=FakeClock()).run):
        await eventually(lambda: _async(_counts(settings)[0] == 1), what="the first alert stored")
        group = config.store_group
        await eventually(
            lambda: _equal(_committed(settings, group, topic), 1), what="the first commit, due at once"
        )
        await produce(settings, topic, later)
        await eventually(lambda: _async(_counts(settings)[0] == 1 + len(later)), what="the rest stored")
        assert await _committed(settings, group, topic) == 1  # stored; its commit is not due yet
    assert await _committed(settings, config.store_group, topic) == 1 + len(later)  # the stop commits it


async def _equal(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
