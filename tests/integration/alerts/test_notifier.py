"""The notifier against real Kafka, a real local webhook server and a real local SMTP server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.conftest import ROOT, unique_name
from tests.integration.alerts.helpers import Member, eventually, produce, running, until_members
from tests.integration.alerts.servers import MailSink, WebhookReceiver, self_signed_cert
from tests.support.fakes import make_alert
from tests.support.topics import read_topic
from thermoflow.alerts.channels import verify
from thermoflow.alerts.notifier import Notifier
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.events import parse_dead_letter_headers
from thermoflow.observe import committed
from thermoflow.settings import ThermoflowSettings

SECRET = "webhook-shared-secret"


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def mail(tmp_path: Path) -> Any:
    cert, key = self_signed_cert(tmp_path)
    sink = MailSink(cert=cert, key=key, username="alerts", password="smtp-pass")
    sink.start()
    yield sink, cert
    sink.stop()


def _notifier_settings(settings: ThermoflowSettings, topic: str, **overrides: Any) -> AlertsSettings:
    return AlertsSettings(
        **{
            **settings.model_dump(),
            "database_url": settings.database_dsn,
            "alerts_topic": topic,
            "notify_group": unique_name("notify"),
            "notifier_state_topic": unique_name("state"),
            "deadletter_topic": unique_name("dlq"),
            "notify_log": False,
            **overrides,
        }
    )


@pytest.fixture
def routes(tmp_path: Path, webhook: WebhookReceiver, mail: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A routes file: a log, the webhook, Slack (on the same receiver) and email; secrets in the env."""
    sink, cert = mail
    monkeypatch.setenv("TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "smtp-pass")
    path = tmp_path / "routes.yaml"
    path.write_text(
        f"""
channels:
  audit: {{type: log, path: "{tmp_path / "notifications.jsonl"}"}}
  hook: {{type: webhook, url: "{webhook.url}", secret_env: TEST_HOOK_SECRET}}
  team: {{type: slack, url: "{webhook.url.replace("/hook", "/slack")}", severities: [critical]}}
  oncall:
    type: email
    host: 127.0.0.1
    port: {sink.port}
    starttls: true
    ca_file: "{cert}"
    username: alerts
    password_env: TEST_SMTP_PASSWORD
    sender: thermoflow@example.test
    recipients: [oncall@example.test]
    severities: [critical]
"""
    )
    return path


async def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    async def probe() -> bool:
        return check()

    await eventually(probe, timeout=timeout, what=what)


async def test_channels_deliver_signed_webhooks_and_starttls_email(
    settings: ThermoflowSettings,
    new_topic: Callable[..., str],
    webhook: WebhookReceiver,
    mail: Any,
    routes: Path,
    tmp_path: Path,
) -> None:
    sink, _ = mail
    topic = new_topic("alerts")
    config = _notifier_settings(settings, topic, notify_routes=routes)
    now = time.time()
    async with running(Notifier(config).run):
        await produce(settings, topic, [
            make_alert("dev-a", now, severity="warning"),
            make_alert("dev-a", now + 1, severity="warning"),  # same incident: nothing new
            make_alert("dev-a", now + 2, severity="critical"),  # escalation
            make_alert("dev-b", now, severity="critical"),
        ])  # fmt: skip
        await _until(
            lambda: (len(webhook.requests), len(sink.messages), len(webhook.slack)) == (3, 2, 2),
            "3 webhooks, 2 emails, 2 Slack messages",
        )

    bodies = [json.loads(r.body) for r in webhook.requests]
    assert sorted((b["device_id"], b["transition"]) for b in bodies) == [
        ("dev-a", "escalate"), ("dev-a", "fire"), ("dev-b", "fire"),
    ]  # fmt: skip
    for request, body in zip(webhook.requests, bodies, strict=True):
        signature = request.headers["X-Thermoflow-Signature"]
        assert verify(request.body, SECRET, signature)
        assert not verify(request.body, "another secret", signature)
        assert not verify(request.body + b" ", SECRET, signature)
        assert request.headers["Idempotency-Key"] == body["idempotency_key"]
    subjects = sorted(str(m["Subject"]).strip() for m in sink.messages)
    assert subjects[0].startswith("[CRITICAL] ESCALATED: dev-a")
    assert subjects[1].startswith("[CRITICAL] FIRING: dev-b")
    assert sink.logins == ["alerts", "alerts"]
    slack_texts = sorted(json.loads(r.body)["text"] for r in webhook.slack)
    assert len(slack_texts) == 2
    assert "[CRITICAL] ESCALATED: dev-a freezer-too-warm" in slack_texts[0]
    assert "[CRITICAL] FIRING: dev-b freezer-too-warm" in slack_texts[1]
    logged = [json.loads(line) for line in (tmp_path / "notifications.jsonl").read_text().splitlines()]
    assert sorted(n["idempotency_key"] for n in logged) == sorted(webhook.keys())


async def test_a_down_webhook_opens_its_breaker_while_the_others_deliver_and_nothing_is_lost(
    settings: ThermoflowSettings,
    new_topic: Callable[..., str],
    webhook: WebhookReceiver,
    mail: Any,
    routes: Path,
    tmp_path: Path,
) -> None:
    sink, _ = mail
    topic = new_topic("alerts")
    config = _notifier_settings(
        settings, topic, notify_routes=routes,
        notify_retries=3, notify_backoff=0.05, notify_backoff_max=0.2, breaker_failures=4, breaker_reset=1.0,
    )  # fmt: skip
    webhook.status = 503
    now = time.time()
    first = [make_alert(f"dev-{d}", now, severity="critical") for d in range(12)]
    later = [make_alert(f"dev-{d}", now, severity="critical") for d in range(12, 17)]
    async with running(Notifier(config).run):
        await produce(settings, topic, first)
        await _until(lambda: len(sink.messages) == 12, "the email channel delivering all 12")
        letters = await read_topic(settings, config.deadletter_topic, at_least=12, extra_polls=0)
        assert len(letters) == 12
        attempts_while_down = webhook.attempts
        webhook.status = 200
        await asyncio.sleep(1.2)  # past breaker_reset: the next send is the half-open probe
        await produce(settings, topic, later)
        await _until(lambda: len(webhook.requests) == 5, "the webhook delivering after it came back")

    assert attempts_while_down < 12 * 3  # the breaker stopped the retries
    reasons = [parse_dead_letter_headers(r.headers) for r in letters]
    assert all(letter.stage == "alerts" and "channel hook" in letter.error for letter in reasons)
    assert any("HTTP 503" in letter.error for letter in reasons)
    assert any("circuit breaker of channel hook is open" in letter.error for letter in reasons)
    dead_keys = {json.loads(r.value)["idempotency_key"] for r in letters}
    delivered_keys = set(webhook.keys())
    # Nothing lost: every one of the 17 fires was either delivered or dead-lettered, none twice.
    assert len(dead_keys) == 12 and len(delivered_keys) == 5 and not dead_keys & delivered_keys
    logged = (tmp_path / "notifications.jsonl").read_text().splitlines()
    assert len(logged) == 17 and len(sink.messages) == 17


async def test_a_killed_and_restarted_notifier_does_not_repeat_what_it_sent(
    settings: ThermoflowSettings, new_topic: Callable[..., str], webhook: WebhookReceiver
) -> None:
    topic = new_topic("alerts", partitions=2)
    group, state = unique_name("notify"), unique_name("state")
    env = {
        **os.environ,
        "THERMOFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "THERMOFLOW_ALERTS_TOPIC": topic,
        "THERMOFLOW_NOTIFY_GROUP": group,
        "THERMOFLOW_NOTIFIER_STATE_TOPIC": state,
        "THERMOFLOW_DEADLETTER_TOPIC": unique_name("dlq"),
        "THERMOFLOW_WEBHOOK_URL": webhook.url,
        "THERMOFLOW_WEBHOOK_SECRET": SECRET,
        "THERMOFLOW_NOTIFY_LOG": "false",
    }
    command = [sys.executable, "-m", "thermoflow", "alerts", "notify"]
    now = time.time()
    fires = [make_alert(f"dev-{d}", now) for d in range(20)]
    escalations = [make_alert(f"dev-{d}", now + 5, severity="critical") for d in range(10)]

    first = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=ROOT, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await produce(settings, topic, fires)
        await _until(lambda: len(webhook.requests) == 20, "20 fires")
        done = 0
        for _ in range(600):
            done = await committed(settings, group)
            if done == 20:
                break
            await asyncio.sleep(0.1)
        assert done == 20
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()

    # The same alerts again (a producer retry) and new escalations, for the restarted notifier.
    await produce(settings, topic, fires + escalations)
    second = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=ROOT, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await _until(lambda: len(webhook.requests) >= 30, "10 escalations after the restart")
        await asyncio.sleep(2)  # time for any wrong repeat to show up
    finally:
        second.send_signal(signal.SIGTERM)
        assert await second.wait() == 0

    bodies = [msgspec.json.decode(r.body) for r in webhook.requests]
    assert sorted(b["transition"] for b in bodies) == ["escalate"] * 10 + ["fire"] * 20
    assert len(set(webhook.keys())) == 30


async def test_a_second_notifier_joins_and_leaves_mid_run_and_each_transition_is_notified_once(
    settings: ThermoflowSettings, new_topic: Callable[..., str], webhook: WebhookReceiver, tmp_path: Path
) -> None:
    """Alerts, each a new incident, arrive in small batches (many commits) while a second
    notifier joins the group, with a batch's webhooks still in flight across the join, and later
    stops: two rebalances under load. Neither process crashes or restarts (before, the commit
    after the partition had moved raised IllegalStateError and ended the notifier), every fire is
    delivered, and none twice: each batch in flight is finished and committed, and its states
    persisted, before the partitions go, and the new owner reloads them before it goes on."""
    topic = new_topic("alerts", partitions=4)
    group = unique_name("notify")
    env = {
        **os.environ,
        "THERMOFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "THERMOFLOW_ALERTS_TOPIC": topic,
        "THERMOFLOW_NOTIFY_GROUP": group,
        "THERMOFLOW_NOTIFIER_STATE_TOPIC": unique_name("state"),
        "THERMOFLOW_DEADLETTER_TOPIC": unique_name("dlq"),
        "THERMOFLOW_WEBHOOK_URL": webhook.url,
        "THERMOFLOW_WEBHOOK_SECRET": SECRET,
        "THERMOFLOW_NOTIFY_LOG": "false",
        "THERMOFLOW_NOTIFY_TIMEOUT": "30",
    }
    first = Member("notify", env, instance=0, log_path=tmp_path / "first.log")
    second = Member("notify", env, instance=1, log_path=tmp_path / "second.log")
    now = time.time()
    fires = [make_alert(f"dev-{d}", now) for d in range(2400)]

    async def feed() -> None:  # ~120 new incidents/s for ~20 s
        for chunk in range(0, len(fires), 30):
            await produce(settings, topic, fires[chunk : chunk + 30])
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
        await until(lambda: len(webhook.requests) >= 100, "100 fires from the first notifier")
        webhook.hold = asyncio.Event()  # the webhooks of the batch in flight wait across the join
        second.start()
        # Until the first notifier has seen the rebalance (its heartbeat says so) and a moment
        # more: the group moves on while the batch is in flight, well within the rebalance
        # timeout (10 s) in which the first notifier must finish that batch and rejoin.
        await until(lambda: "because it is rebalancing" in first.log(), "the first notifier to see the join")
        await asyncio.sleep(1)
        webhook.hold.set()
        await until_members(settings, group, topic, 2)
        at_join = len(webhook.requests)
        await until(lambda: len(webhook.requests) >= at_join + 200, "fires from both")
        # The webhook answers from this event loop: wait for the exit in a thread.
        assert await asyncio.to_thread(second.terminate) == 0, second.log()  # persisted, committed
        assert not feeding.done(), "the second notifier must leave while alerts arrive"
        await feeding
        await until(lambda: len(set(webhook.keys())) >= len(fires), "every fire", timeout=120)
        await asyncio.sleep(2)  # time for a wrong repeat to show up
        assert first.alive(), first.log()
        assert await asyncio.to_thread(first.terminate) == 0, first.log()
    finally:
        feeding.cancel()
        first.close()
        second.close()
    assert (first.starts, second.starts) == (1, 1)
    bodies = [msgspec.json.decode(r.body) for r in webhook.requests]
    assert sorted(b["device_id"] for b in bodies) == sorted(a.device_id for a in fires)  # once each
    assert {b["transition"] for b in bodies} == {"fire"}
    assert len(set(webhook.keys())) == len(fires)
    assert len(first.events("partitions_revoked")) >= 2, first.log()  # it went through both rebalances
    refused = len(first.events("offset_commit_refused")) + len(second.events("offset_commit_refused"))
    print(f"commits refused by a rebalance: {refused}")
