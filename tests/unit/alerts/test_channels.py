"""What the channels put on the wire: signatures, Slack text, email headers, log lines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.support.fakes import make_alert
from thermoflow.alerts.channels import EmailChannel, LogChannel, sign, slack_message, verify
from thermoflow.alerts.lifecycle import Policy
from thermoflow.alerts.notification import Notification, headline
from thermoflow.alerts.tracker import IncidentTracker


def _resolve_notification() -> Notification:
    tracker = IncidentTracker(Policy(resolve_after=60, repeat_interval=600))
    tracker.on_alert(make_alert("freezer-7", 1_764_218_400.0, value=-4.5), now=1_764_218_400.0)
    [resolved] = tracker.on_watermark(partition=-1, watermark=1_764_218_460.0, now=1_764_218_460.0)
    return resolved


def test_signature_verifies_only_with_the_same_secret_and_body() -> None:
    body = b'{"transition":"fire"}'
    signature = sign(body, "s3cret")
    assert signature.startswith("sha256=") and verify(body, "s3cret", signature)
    assert not verify(body, "other", signature)
    assert not verify(body + b"\n", "s3cret", signature)


def test_slack_message_reads_like_a_sentence() -> None:
    text = slack_message(_resolve_notification())["text"]
    assert text.startswith(":white_check_mark: *[WARNING] RESOLVED: freezer-7 freezer-too-warm")
    assert "resolved 2025-11-27 04:41:00 UTC" in text


def test_email_carries_the_headline_and_a_stable_message_id() -> None:
    notification = _resolve_notification()
    channel = EmailChannel("mail", host="h", port=25, sender="a@x", recipients=["b@x", "c@x"])
    message = channel.message(notification)
    assert message["Subject"] == headline(notification)
    assert message["To"] == "b@x, c@x"
    assert message["Message-ID"] == f"<{notification.idempotency_key}@thermoflow>"


async def test_log_channel_writes_one_json_line_per_notification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notification = _resolve_notification()
    channel = LogChannel("file", path=tmp_path / "n.jsonl")
    await channel.send(notification)
    await channel.send(notification)
    await channel.close()
    lines = (tmp_path / "n.jsonl").read_text().splitlines()
    assert [json.loads(line)["idempotency_key"] for line in lines] == [notification.idempotency_key] * 2

    stdout = io.StringIO()
    monkeypatch.setattr("sys.stdout", stdout)
    await LogChannel("stdout").send(notification)
    assert json.loads(stdout.getvalue())["transition"] == "resolve"
