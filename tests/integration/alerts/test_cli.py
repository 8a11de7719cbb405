"""The operator commands: `thermoflow alerts list` and `ack`, and fast failure on bad config."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakes import make_alert
from thermoflow import db, kafka
from thermoflow.alerts.lifecycle import Policy
from thermoflow.alerts.store import store_batch
from thermoflow.cli import main
from thermoflow.events import decode_ack, is_ack
from thermoflow.settings import ThermoflowSettings


def thermoflow(*args: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the CLI in this process; exit code back."""
    monkeypatch.setattr("sys.argv", ["thermoflow", *args])
    # configure_logging binds structlog to this test's captured stderr for good; skip it here.
    monkeypatch.setattr("thermoflow.alerts.cli.configure_logging", lambda **_: None)
    with pytest.raises(SystemExit) as exit_:
        main()
    return int(exit_.value.code or 0)


async def _all_records(settings: ThermoflowSettings, topic: str) -> list[Any]:
    consumer = kafka.consumer(settings, topic, group_id=None)
    await consumer.start()
    try:
        return [r for batch in (await consumer.getmany(timeout_ms=2_000)).values() for r in batch]
    finally:
        await consumer.stop()


def _seed(settings: ThermoflowSettings) -> None:
    async def seed() -> None:
        conn = await db.connect_async(settings)
        try:
            alerts = [make_alert("fridge-1", 100.0), make_alert("fridge-2", 100.0, severity="critical")]
            alerts.append(make_alert("fridge-3", 0.0))
            alerts.append(make_alert("fridge-3", 1000.0))  # a gap: its first incident resolved
            await store_batch(conn, alerts=alerts, policy=Policy(resolve_after=300, repeat_interval=600))
        finally:
            await conn.close()

    db.migrate(settings)
    asyncio.run(seed())


def test_list_and_ack(
    settings: ThermoflowSettings,
    new_topic: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _seed(settings)
    topic = new_topic("alerts")
    capsys.readouterr()  # what seeding and creating the topic logged
    monkeypatch.setenv("THERMOFLOW_DATABASE_URL", settings.database_dsn)
    monkeypatch.setenv("THERMOFLOW_DATABASE_SCHEMA", settings.database_schema)
    monkeypatch.setenv("THERMOFLOW_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("THERMOFLOW_ALERTS_TOPIC", topic)

    assert thermoflow("alerts", "list", "--json", monkeypatch=monkeypatch) == 0
    everything = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((i["device_id"], i["status"]) for i in everything) == [
        ("fridge-1", "firing"), ("fridge-2", "firing"), ("fridge-3", "firing"), ("fridge-3", "resolved"),
    ]  # fmt: skip

    assert (
        thermoflow("alerts", "list", "--json", "--open", "--device", "fridge-3", monkeypatch=monkeypatch) == 0
    )
    [open_3] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert open_3["status"] == "firing"

    ack = ["alerts", "ack", open_3["incident_id"], "--by", "ops"]
    assert thermoflow(*ack, "--note", "x" * 1_001, monkeypatch=monkeypatch) == 1
    assert "note is 1,001 characters long; at most 1,000 are allowed" in capsys.readouterr().err
    assert thermoflow(*ack, "--note", "on it\x1b[31m", monkeypatch=monkeypatch) == 1
    assert "control character U+001B" in capsys.readouterr().err
    assert thermoflow(*ack, "--note", "compressor restarted", monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert "acknowledged by ops at" in out and "note: compressor restarted" in out
    assert thermoflow(*ack[:3], "--by", "someone-else", monkeypatch=monkeypatch) == 0  # a second time
    assert "was already acknowledged by ops" in capsys.readouterr().out
    records = asyncio.run(_all_records(settings, topic))
    assert [(r.key, decode_ack(r.value).note) for r in records if is_ack(r.headers)] == [
        (b"fridge-3", "compressor restarted")
    ]
    assert thermoflow("alerts", "list", "--json", "--device", "fridge-3", monkeypatch=monkeypatch) == 0
    statuses = {i["incident_id"]: i["status"] for i in map(json.loads, capsys.readouterr().out.splitlines())}
    assert statuses[open_3["incident_id"]] == "acknowledged"
    assert (
        thermoflow("alerts", "list", "--json", "--device", "fridge-3", "--open", monkeypatch=monkeypatch) == 0
    )
    [acked] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (acked["acknowledged_by"], acked["ack_note"]) == ("ops", "compressor restarted")

    resolved = next(i for i in everything if i["status"] == "resolved")
    assert thermoflow("alerts", "ack", resolved["incident_id"], monkeypatch=monkeypatch) == 1
    assert thermoflow("alerts", "ack", "no-such-incident", monkeypatch=monkeypatch) == 1
    assert thermoflow("alerts", "list", monkeypatch=monkeypatch) == 0  # the table renders
    assert "fridge-2" in capsys.readouterr().out


def test_bad_notifier_config_fails_fast_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("channels: {pager: {type: webhook, url: 'http://x', secret_env: NOT_SET_ANYWHERE}}")
    assert thermoflow("alerts", "notify", "--notify-routes", str(routes), monkeypatch=monkeypatch) == 2
    assert "NOT_SET_ANYWHERE" in capsys.readouterr().err
    monkeypatch.setenv("THERMOFLOW_WEBHOOK_URL", "http://127.0.0.1:1/hook")
    assert thermoflow("alerts", "notify", monkeypatch=monkeypatch) == 2
    assert "THERMOFLOW_WEBHOOK_SECRET" in capsys.readouterr().err
    assert thermoflow("alerts", "store", "--store-batch-size", "0", monkeypatch=monkeypatch) == 2
