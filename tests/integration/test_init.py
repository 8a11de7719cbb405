"""`thermoflow init` on a real Kafka and PostgreSQL: the topics the settings name, the detectors'
state topic among them, and a second run that finds everything in place."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.conftest import unique_name
from thermoflow import kafka
from thermoflow.settings import ThermoflowSettings


def _init(settings: ThermoflowSettings, group: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "THERMOFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "THERMOFLOW_DATABASE_URL": settings.database_dsn,
        "THERMOFLOW_DATABASE_SCHEMA": settings.database_schema,
        "THERMOFLOW_READINGS_TOPIC": settings.readings_topic,
        "THERMOFLOW_ALERTS_TOPIC": settings.alerts_topic,
        "THERMOFLOW_DEADLETTER_TOPIC": settings.deadletter_topic,
        "THERMOFLOW_PROCESSOR_GROUP": group,
    }
    return subprocess.run(
        [sys.executable, "-m", "thermoflow", "init", *args],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip


def _said(result: subprocess.CompletedProcess[str], what: str) -> str:
    """What `init` printed after ``what:`` (the console wraps long lines: joined again here)."""
    text = " ".join(result.stdout.split())
    return text.split(f"{what}: ", 1)[1].split(" migrations applied:")[0].split(" retention set:")[0]


async def _cleanup_policy(settings: ThermoflowSettings, topic: str) -> str:
    admin = AIOKafkaAdminClient(**settings.kafka_options())
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    entries = response.resources[0][4]  # (error code, message, type, name, [config entries])
    return next(str(entry[1]) for entry in entries if entry[0] == "cleanup.policy")


def test_init_creates_the_named_topics_and_the_detectors_state_topic(settings: ThermoflowSettings) -> None:
    """Before, `init` created telemetry.* whatever THERMOFLOW_*_TOPIC said, and no state topic:
    the first worker made it, so a deployment could not provision it ahead (or see it fail)."""
    settings = settings.model_copy(
        update={
            "readings_topic": unique_name("init-readings"),
            "alerts_topic": unique_name("init-alerts"),
            "deadletter_topic": unique_name("init-deadletter"),
        }
    )
    group = unique_name("init-processors")
    state = f"{group}-device-state"

    first = _init(settings, group, "--readings-partitions", "4", "--alerts-partitions", "2")

    assert first.returncode == 0, first.stderr
    names = [settings.readings_topic, settings.alerts_topic, settings.deadletter_topic, state]
    assert _said(first, "topics created") == ", ".join(names)
    counts = asyncio.run(kafka.partition_counts(settings, names))
    assert [counts[name] for name in names] == [4, 2, 3, 4]  # the state topic: as many as the readings
    assert asyncio.run(_cleanup_policy(settings, state)) == "compact"

    again = _init(settings, group)

    assert again.returncode == 0, again.stderr
    assert _said(again, "topics created") == "none (all existed)"
    assert _said(again, "migrations applied") == "none (schema up to date)"
