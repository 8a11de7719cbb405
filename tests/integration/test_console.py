"""`thermoflow console` over real PostgreSQL, Kafka and Mosquitto, through aiohttp's test client.

What an operator relies on: pages render what the database and the dead-letter topic hold,
escaped; acknowledge does what `thermoflow alerts ack` does, once per double click, with the
note; redrive puts the dead letter's bytes back on its MQTT topic, once, recorded with who;
writes need a login and the session's CSRF token; a hostile parameter is a 400 that says why.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer

from tests.conftest import free_port
from tests.support.fakes import make_alert
from tests.support.topics import read_topic
from thermoflow import db, mqtt
from thermoflow.alerts.kafka_io import write_states
from thermoflow.alerts.lifecycle import Incident, Policy
from thermoflow.alerts.store import store_batch
from thermoflow.console import queries
from thermoflow.console.app import create_app, serving
from thermoflow.console.context import DEADLETTERS
from thermoflow.console.settings import ConsoleSettings
from thermoflow.events import DeadLetter, dead_letter_headers, is_ack
from thermoflow.settings import ThermoflowSettings

pytestmark = pytest.mark.integration

TOKEN = "demo-s3cret"
SCRIPT = "<script>alert(1)</script>"


def console_settings(settings: ThermoflowSettings, **overrides: Any) -> ConsoleSettings:
    values = {**settings.model_dump(), "console_token": TOKEN, **overrides}
    return ConsoleSettings(**values)


async def seed(settings: ThermoflowSettings, *device_ids: str) -> None:
    """One firing warning incident per device, from alert events as the processors emit them."""
    db.migrate(settings)
    conn = await db.connect_async(settings)
    try:
        now = time.time()
        alerts = [make_alert(device, now - 60) for device in device_ids]
        await store_batch(conn, alerts=alerts, policy=Policy(resolve_after=3600, repeat_interval=3600))
    finally:
        await conn.close()


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient[Any, Any]] = []

    async def make(settings: ConsoleSettings, *, background: bool = False) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, background=background)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def _json(record: Any) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(record.value)
    return decoded


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def login(client: TestClient[Any, Any], user: str = "ana", password: str = TOKEN) -> str:
    """Log in; returns the logged-in session's CSRF token."""
    page = await client.get("/login")
    answer = await client.post(
        "/login", data={"csrf": csrf_of(await page.text()), "user": user, "password": password, "next": "/"},
        allow_redirects=False,
    )  # fmt: skip
    assert answer.status == 303, await answer.text()
    return csrf_of(await (await client.get("/incidents")).text())


def incident_ids(settings: ThermoflowSettings) -> dict[str, str]:
    with db.connect(settings) as conn:
        return {device: iid for iid, device in conn.execute("SELECT incident_id, device_id FROM incidents")}


async def test_incidents_escape_device_ids_and_ack_once_with_note(
    settings: ThermoflowSettings, client_for: Callable[..., Any], new_topic: Callable[..., str]
) -> None:
    await seed(settings, "freezer-1", SCRIPT)
    alerts_topic = new_topic("alerts")
    client = await client_for(console_settings(settings, alerts_topic=alerts_topic))
    page = await client.get("/incidents?status=open")
    html = await page.text()
    assert page.status == 200
    assert "freezer-1" in html
    assert SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    device_page = await client.get("/device", params={"id": SCRIPT, "range": "1h"})
    assert device_page.status == 200
    assert SCRIPT not in await device_page.text()

    ids = incident_ids(settings)
    target = ids["freezer-1"]
    csrf = await login(client)
    # A double click: two POSTs at once; one acknowledgement, one note.
    answers = await asyncio.gather(*[
        client.post(f"/incidents/{target}/ack", data={"csrf": csrf, "note": "on my way <b>now</b>"},
                    allow_redirects=False)
        for _ in range(2)
    ])  # fmt: skip
    assert [a.status for a in answers] == [303, 303]
    with db.connect(settings) as conn:
        status, by = conn.execute(
            "SELECT status, acknowledged_by FROM incidents WHERE incident_id = %s", (target,)
        ).fetchone() or (None, None)
        notes = conn.execute(
            "SELECT acknowledged_by, ack_note FROM incidents WHERE ack_note IS NOT NULL"
        ).fetchall()
        other = conn.execute("SELECT status FROM incidents WHERE incident_id = %s", (ids[SCRIPT],)).fetchone()
    assert (status, by) == ("acknowledged", "ana")
    assert notes == [("ana", "on my way <b>now</b>")]
    assert other == ("firing",)
    # The notifier hears of it as from `thermoflow alerts ack`: one ack record, with who and the note.
    acks = [
        r for r in await read_topic(settings, alerts_topic, at_least=1, extra_polls=4) if is_ack(r.headers)
    ]
    assert [(a["incident_id"], a["acknowledged_by"], a["note"]) for a in map(_json, acks)] == [
        (target, "ana", "on my way <b>now</b>")
    ]

    detail = await (await client.get(f"/incidents/{target}")).text()
    assert "acknowledged" in detail and "on my way &lt;b&gt;now&lt;/b&gt;" in detail
    assert 'id="ack"' not in detail  # no button on an acknowledged incident

    filtered = await (await client.get("/incidents", params={"status": "firing"})).text()
    assert "freezer-1" not in filtered and "&lt;script&gt;" in filtered


async def test_an_ack_kafka_does_not_take_is_not_stored_and_the_page_says_so(
    settings: ThermoflowSettings, client_for: Callable[..., Any]
) -> None:
    # The notifier hears of an acknowledgement only from Kafka: without Kafka, none is stored.
    await seed(settings, "freezer-9")
    target = incident_ids(settings)["freezer-9"]
    client = await client_for(console_settings(settings, kafka_bootstrap=f"127.0.0.1:{free_port()}"))
    csrf = await login(client)
    answer = await client.post(f"/incidents/{target}/ack", data={"csrf": csrf, "note": "x"})
    assert answer.status == 200  # back on the incident's page
    page = await answer.text()
    assert "not acknowledged, nothing stored" in page and "Kafka" in page
    assert 'id="ack"' in page  # still firing: the button is there to try again
    with db.connect(settings) as conn:
        assert conn.execute("SELECT status, ack_note FROM incidents").fetchall() == [("firing", None)]


async def test_writes_need_login_and_csrf(
    settings: ThermoflowSettings, client_for: Callable[..., Any]
) -> None:
    await seed(settings, "freezer-2")
    target = incident_ids(settings)["freezer-2"]
    client = await client_for(console_settings(settings))

    # Anonymous, with the session's own valid CSRF token: still no write.
    anonymous_csrf = csrf_of(await (await client.get("/login")).text())
    answer = await client.post(f"/incidents/{target}/ack", data={"csrf": anonymous_csrf, "note": "x"})
    assert answer.status == 401
    # A wrong password logs nobody in.
    answer = await client.post(
        "/login", data={"csrf": anonymous_csrf, "user": "ana", "password": "guess"}, allow_redirects=False
    )
    assert answer.status == 401
    assert "wrong name or password" in await answer.text()

    csrf = await login(client)
    # Forged: no token, a wrong token, the token of another session.
    for forged in ({}, {"csrf": "not-the-token"}, {"csrf": anonymous_csrf}):
        answer = await client.post(f"/incidents/{target}/ack", data={"note": "forged", **forged})
        assert answer.status == 403, forged
        assert "CSRF" in await answer.text()
    with db.connect(settings) as conn:
        assert conn.execute("SELECT status FROM incidents").fetchall() == [("firing",)]

    # Logged out: the old session's token is worth nothing.
    await client.post("/logout", data={"csrf": csrf})
    answer = await client.post(f"/incidents/{target}/ack", data={"csrf": csrf})
    assert answer.status == 403


async def test_reading_is_closed_off_loopback(
    settings: ThermoflowSettings, client_for: Callable[..., Any]
) -> None:
    db.migrate(settings)
    client = await client_for(console_settings(settings, console_host="0.0.0.0"))
    answer = await client.get("/incidents", allow_redirects=False)
    assert answer.status == 302
    assert answer.headers["Location"].startswith("/login?next=")
    assert (await client.get("/overview/events")).status == 401
    await login(client)
    assert (await client.get("/incidents")).status == 200


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/incidents?limit=99999999999999999999999", "limit must be a whole number"),
        ("/incidents?limit=%C2%B2", "limit must be a whole number"),
        ("/incidents?severity=%3Cb%3E", "severity must be one of"),
        ("/incidents?device=a%00b", "control character (U+0000)"),
        ("/incidents?rule=" + "x" * 5000, "at most 256"),
        ("/device?id=a%1Bb", "control character (U+001B)"),
        ("/device", "which device"),
        ("/device?id=x&range=2099-13-45", "range must be one of"),
        ("/deadletters?limit=-5", "limit must be a whole number"),
        ("/incidents/a%0Ab", "control character (U+000A)"),
    ],
)
async def test_hostile_params_are_400_with_a_reason(
    settings: ThermoflowSettings, client_for: Callable[..., Any], path: str, message: str
) -> None:
    db.migrate(settings)
    client = await client_for(console_settings(settings))
    answer = await client.get(path)
    assert answer.status == 400
    assert message in await answer.text()


async def test_deadletters_escaped_and_redriven_once_to_mqtt(
    settings: ThermoflowSettings, client_for: Callable[..., Any], new_topic: Callable[..., str]
) -> None:
    db.migrate(settings)
    deadletters = new_topic("console-dl")
    mqtt_topic = f"test/console/{deadletters}/{SCRIPT}"
    payloads = [SCRIPT.encode(), b'{"temp": "warm"}', b"\xff\xfe not utf-8"]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for payload in payloads:
            reason = "payload is neither JSON nor a number" if payload != payloads[1] else "no value field"
            letter = DeadLetter(error=reason, stage="ingest", source=mqtt_topic, failed_at=time.time())
            await producer.send_and_wait(deadletters, payload, headers=dead_letter_headers(letter))
    finally:
        await producer.stop()

    received: list[bytes] = []
    subscribed = threading.Event()
    listener = mqtt.client(settings, client_id=f"test-console-{deadletters[-8:]}")
    listener.on_connect = lambda c, *_: c.subscribe(mqtt_topic, qos=1)
    listener.on_subscribe = lambda *_: subscribed.set()
    listener.on_message = lambda _c, _u, message: received.append(bytes(message.payload))
    listener.connect(settings.mqtt_host, settings.mqtt_port)
    listener.loop_start()
    try:
        assert await asyncio.to_thread(subscribed.wait, 10)
        client = await client_for(console_settings(settings, deadletter_topic=deadletters), background=True)
        tail = client.app[DEADLETTERS]
        await asyncio.wait_for(tail.caught_up.wait(), 30)
        html = await (await client.get("/deadletters")).text()
        assert SCRIPT not in html
        assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2  # the payload and the topic
        assert "<button>Redrive" not in html  # not logged in: no buttons

        csrf = await login(client)
        [first] = [x for x in tail.letters() if x.payload == payloads[0]]
        for _ in range(2):  # a double click
            answer = await client.post("/deadletters/redrive", data={"csrf": csrf, "letter": first.ref})
            assert answer.status == 200
        await _until(lambda: len(received) >= 1)
        await asyncio.sleep(0.5)  # a second publish, if one were made, would be here by now
        assert received == [payloads[0]]

        answer = await client.post(
            "/deadletters/redrive", data={"csrf": csrf, "reason": "payload is neither JSON nor a number"}
        )
        assert "sent 1 back to the bridge; 1 already redriven before" in await answer.text()
        await _until(lambda: len(received) >= 2)
        assert received == [payloads[0], payloads[2]]
        # The broker away: the page says so and nothing is recorded (the letter can be sent later).
        away = console_settings(
            settings, deadletter_topic=deadletters, mqtt_url=f"mqtt://127.0.0.1:{free_port()}"
        )
        other = await client_for(away, background=True)
        await asyncio.wait_for(other.app[DEADLETTERS].caught_up.wait(), 30)
        other_csrf = await login(other)
        [second] = [x for x in other.app[DEADLETTERS].letters() if x.payload == payloads[1]]
        answer = await other.post("/deadletters/redrive", data={"csrf": other_csrf, "letter": second.ref})
        assert "redrive failed, nothing recorded" in await answer.text()
        with db.connect(settings) as conn:
            rows = conn.execute(
                "SELECT deadletter_offset, mqtt_topic, redriven_by FROM deadletter_redrives ORDER BY 1"
            ).fetchall()
        assert rows == [(0, mqtt_topic, "ana"), (2, mqtt_topic, "ana")]
        page = await (await client.get("/deadletters")).text()
        assert page.count("redriven by ana") == 2
    finally:
        listener.loop_stop()
        listener.disconnect()


async def test_overview_streams_figures(settings: ThermoflowSettings, client_for: Callable[..., Any]) -> None:
    await seed(settings, "freezer-3")
    client = await client_for(console_settings(settings), background=True)
    answer = await client.get("/overview/events")
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    samples: list[dict[str, Any]] = []
    while len(samples) < 2:
        line = await asyncio.wait_for(answer.content.readline(), 15)
        if line.startswith(b"data: ") and json.loads(line[6:])["ready"]:
            samples.append(json.loads(line[6:]))
    answer.close()
    assert samples[1]["sample"] > samples[0]["sample"]
    assert samples[1]["open_by_severity"] == {"warning": 1}
    assert "per_second" in samples[1], samples[1]
    assert set(samples[1]["per_second"]) == {"mqtt_in", "kafka", "stored"}
    assert samples[1]["mqtt_in_source"] in ("broker, 1-min average", "bridged")


async def _until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


RULES = """version: 1
rules:
  - id: cold
    devices: "freezer-*"
    above: {warning: -12.0, critical: -8.0}
"""


async def test_device_chart_has_points_thresholds_and_alerts(
    settings: ThermoflowSettings, client_for: Callable[..., Any], tmp_path: Path
) -> None:
    await seed(settings, "freezer-4")  # one alert event a minute ago, value 5.0
    with db.connect(settings) as conn:
        conn.execute(
            "INSERT INTO readings (device_id, metric, ts, value, received_at)"
            " SELECT 'freezer-4', 'temperature', now() - make_interval(secs => s), -20 + s / 1000.0, now()"
            " FROM generate_series(10, 3000, 10) s"
        )
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    client = await client_for(console_settings(settings, console_rules_file=rules))
    for span, points in (("1h", 300), ("24h", 0)):
        html = await (await client.get("/device", params={"id": "freezer-4", "range": span})).text()
        found = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', html, re.S)
        assert found, html
        chart = json.loads(found.group(1))
        if points:
            assert len(chart["t"]) == points and chart["source"] == "readings"
        else:  # 5-minute points from readings_1m: 3000 s of readings make 10 or 11 of them
            assert 10 <= len(chart["t"]) <= 11 and chart["source"] == "readings_1m"
            assert min(chart["min"]) == pytest.approx(-19.99) and max(chart["max"]) == pytest.approx(-17.0)
        assert sorted((t["severity"], t["value"]) for t in chart["thresholds"]) == [
            ("critical", -8.0),
            ("warning", -12.0),
        ]
        assert [[severity, value] for _, value, severity in chart["alerts"]] == [["warning", 5.0]]
    assert "/static/uPlot.iife.min.js" in html


async def test_rules_page_shows_the_last_reload_and_its_error(
    settings: ThermoflowSettings, client_for: Callable[..., Any], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    client = await client_for(console_settings(settings, console_rules_file=rules))
    html = await (await client.get("/rules")).text()
    assert "loaded 1 rules" in html and "freezer-*" in html
    rules.write_text(RULES.replace("-8.0", '"hot"').replace("id: cold", 'id: "<script>x"'))
    os.utime(rules, (time.time() + 5, time.time() + 5))  # a new mtime even within the clock's resolution
    html = await (await client.get("/rules")).text()
    assert "refused, the rules before it stay in force" in html
    assert "&lt;script&gt;" in html and '<script>"' not in html
    assert "freezer-*" in html  # the last good rules, still in force


async def test_served_over_real_http(settings: ThermoflowSettings) -> None:
    db.migrate(settings)
    async with serving(console_settings(settings, console_port=0), background=False) as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url) and not url.endswith(":0/")
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "incidents") as page:
                assert page.status == 200
                cookie = page.headers["Set-Cookie"]
                assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
                assert "script-src 'self'" in page.headers["Content-Security-Policy"]
            async with session.get(url + "static/uPlot.iife.min.js") as script:
                assert script.status == 200 and b"uPlot" in await script.read()


async def test_incident_page_counts_the_notifiers_notifications(
    settings: ThermoflowSettings, client_for: Callable[..., Any], new_topic: Callable[..., str]
) -> None:
    await seed(settings, "freezer-5")
    incident_id = incident_ids(settings)["freezer-5"]
    state_topic = new_topic("console-notifier-state")
    with db.connect(settings) as conn:
        row = queries.incident(conn, incident_id)
    assert row is not None
    state = Incident(
        incident_id=incident_id, device_id=row.device_id, rule_id=row.rule_id, metric=row.metric,
        condition=row.condition, threshold=row.threshold, severity="critical",
        opened_at=row.opened_at.timestamp(), last_breach_at=row.last_breach_at.timestamp(),
        peak_value=row.peak_value, breach_count=1, notified_at=1_764_218_400.0, seq=3,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await write_states(producer, state_topic, [state])
    finally:
        await producer.stop()
    client = await client_for(console_settings(settings, notifier_state_topic=state_topic), background=True)
    deadline = time.monotonic() + 30
    while True:
        html = await (await client.get(f"/incidents/{incident_id}")).text()
        if "<b>3</b> notifications sent" in html:
            break
        assert time.monotonic() < deadline, html
        await asyncio.sleep(0.2)
    assert "2025-11-27 04:40:00 UTC" in html


async def test_shutdown_ends_open_event_streams(settings: ThermoflowSettings) -> None:
    """A browser holding the overview open must not hold up the console's stop (aiohttp waits 60 s)."""
    db.migrate(settings)

    async def serve_and_stop(session: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        async with serving(console_settings(settings, console_port=0), background=True) as url:
            stream = await session.get(url + "overview/events")
            assert (await stream.content.readline()).startswith(b"data: ")
        return stream  # the context's exit returned: the server stopped with the stream open

    async with aiohttp.ClientSession() as session:
        stream = await asyncio.wait_for(serve_and_stop(session), 30)
        assert await asyncio.wait_for(stream.content.read(), 10) is not None  # ended, not hanging
        stream.close()
