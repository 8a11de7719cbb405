"""--measure against real Mosquitto, Kafka and PostgreSQL.

A small stand-in pipeline inside the test (not the real bridge or processors: those are
tested end to end elsewhere) moves the simulator's MQTT messages to Kafka and the
``readings`` table, with one reading deliberately lost and one duplicated, dead-letters
the malformed ones, and raises one alert per breaching reading plus one false alert and
one redelivered alert. The report must count exactly that.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import unique_name
from tests.integration.simulator.conftest import Subscriber
from thermoflow import db, kafka
from thermoflow.events import AlertEvent, DeadLetter, Reading, dead_letter_headers, encode, new_alert
from thermoflow.rules import DEFAULT_RULES_FILE, load_rules
from thermoflow.settings import ThermoflowSettings
from thermoflow.simulator.run import Controls, Outputs, simulate
from thermoflow.simulator.settings import SimulatorSettings


class StandInPipeline:
    """MQTT -> Kafka readings / dead letters / alerts, and -> the readings table."""

    def __init__(self, settings: SimulatorSettings, subscriber: Subscriber, *, lose: int, duplicate: int):
        self.settings = settings
        self.subscriber = subscriber
        self.lose, self.duplicate = lose, duplicate
        self.rules = load_rules(DEFAULT_RULES_FILE)
        self.readings = 0
        self.breaches = 0
        self.lost = False
        self.first_alert: AlertEvent | None = None
        self.group_ready = asyncio.Event()

    async def run(self) -> None:
        producer = kafka.producer(self.settings)
        await producer.start()
        conn = await db.connect_async(self.settings, autocommit=True)
        done = 0
        try:
            while True:
                messages = self.subscriber.messages[done:]
                done += len(messages)
                for topic, payload in messages:
                    await self._one(producer, conn, topic, payload)
                await producer.flush()
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()
            await conn.close()

    async def slow_consumer_group(self, group: str) -> None:
        """A consumer group on the readings topic that commits only every 2 seconds, like a lagging sink."""
        consumer = kafka.consumer(self.settings, self.settings.readings_topic, group_id=group)
        await consumer.start()
        try:
            while True:
                await consumer.getmany(timeout_ms=2000)
                await consumer.commit()
                self.group_ready.set()
                await asyncio.sleep(2.0)
        finally:
            await consumer.stop()

    async def _one(self, producer: Any, conn: Any, topic: str, payload: bytes) -> None:
        s = self.settings
        device_id = topic.split("/")[1]
        now = asyncio.get_running_loop().time()
        try:
            body = json.loads(payload)
            value = body["value"]
            assert isinstance(value, float) and math.isfinite(value)
        except (ValueError, KeyError, TypeError, AssertionError):
            letter = DeadLetter(error="bad payload", stage="ingest", source=topic, failed_at=now)
            await producer.send(
                s.deadletter_topic, payload, key=device_id.encode(), headers=dead_letter_headers(letter)
            )
            return
        self.readings += 1
        breach = self.rules.classify(device_id, "temperature", value)
        if self.readings >= self.lose and not self.lost and breach is None:
            self.lost = True  # lose a healthy reading, so no episode goes missing with it
            return
        reading = Reading(
            device_id=device_id, value=value, ts=body["ts"], seq=body["seq"], received_at=body["ts"]
        )
        copies = 2 if self.readings == self.duplicate else 1
        for _ in range(copies):
            await producer.send(s.readings_topic, encode(reading), key=device_id.encode())
            await conn.execute(
                "INSERT INTO readings (device_id, metric, ts, value, seq, received_at)"
                " VALUES (%s, %s, to_timestamp(%s), %s, %s, to_timestamp(%s)) ON CONFLICT DO NOTHING",
                (device_id, "temperature", reading.ts, value, reading.seq, reading.ts),
            )
        if breach is None:
            return
        self.breaches += 1
        alert = new_alert(
            device_id=device_id,
            metric="temperature",
            rule_id=breach.rule_id,
            severity=breach.severity,
            condition=breach.condition,
            threshold=breach.threshold,
            value=value,
            reading_ts=reading.ts,
            detected_at=reading.ts,
        )
        await producer.send(s.alerts_topic, encode(alert), key=device_id.encode())
        if self.first_alert is None:
            self.first_alert = alert
            await producer.send(s.alerts_topic, encode(alert), key=device_id.encode())  # redelivered
            wrong = "warning" if alert.severity == "critical" else "critical"
            false = msgspec_replace(alert, severity=wrong)
            await producer.send(s.alerts_topic, encode(false), key=device_id.encode())


def msgspec_replace(alert: AlertEvent, **changes: Any) -> AlertEvent:
    """The alert with ``changes``, and the alert id those give."""
    fields = {name: getattr(alert, name) for name in alert.__struct_fields__ if name not in ("v", "alert_id")}
    return new_alert(**{**fields, **changes})


async def test_measure_counts_loss_duplicates_dead_letters_latency_and_alert_quality(
    settings: ThermoflowSettings, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    prefix = unique_name("sim")
    sim_settings = SimulatorSettings(
        mqtt_url=settings.mqtt_url,
        kafka_bootstrap=settings.kafka_bootstrap,
        database_url=settings.database_dsn,
        database_schema=settings.database_schema,
        readings_topic=new_topic("readings", partitions=3),
        alerts_topic=new_topic("alerts"),
        deadletter_topic=new_topic("deadletter"),
        topic_template=f"{prefix}/{{device_id}}/{{metric}}",
        client_prefix=unique_name("sim"),
        devices=40,
        rate=5.0,
        duration=3.0,
        qos=1,
        connections=4,
        seed=8,
        anomaly_rate=900.0,
        anomaly_kinds="spike,drift,flapping,malformed",
    )
    await asyncio.to_thread(db.migrate, sim_settings)
    subscriber = await asyncio.to_thread(Subscriber, settings, prefix, 1)
    pipeline = StandInPipeline(sim_settings, subscriber, lose=17, duplicate=23)
    group = unique_name("slow-sink")
    task = asyncio.create_task(pipeline.run())
    slow = asyncio.create_task(pipeline.slow_consumer_group(group))
    try:
        await asyncio.wait_for(pipeline.group_ready.wait(), 60)  # joined and committed once
        outputs = Outputs(
            report=tmp_path / "report.json",
            plot=tmp_path / "run.png",
            measure=True,
            measure_timeout=30,
            measure_quiet=1.0,
        )
        report = await simulate(sim_settings, outputs, Controls())
    finally:
        for running in (task, slow):
            running.cancel()
        await asyncio.gather(task, slow, return_exceptions=True)
        await asyncio.to_thread(subscriber.close)

    assert report == json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    published = report["published"]
    assert published > 0 and report["measured"]
    kafka_delivery = report["delivery"]["kafka"]
    assert kafka_delivery["key"] == "seq"
    assert kafka_delivery["expected"] == published
    assert (kafka_delivery["lost"], kafka_delivery["duplicates"], kafka_delivery["unexpected"]) == (1, 1, 0)
    assert kafka_delivery["received"] == published
    database = report["delivery"]["database"]
    assert (database["expected"], database["unique"], database["lost"], database["duplicates"]) == (
        published,
        published - 1,
        1,
        0,
    )
    # The wait ended only once the pipeline's consumer groups had committed everything.
    assert report["delivery"]["consumer_lag"] == {group: 0}
    assert report["delivery"]["settled"] is True
    dead = report["delivery"]["deadletter"]
    assert dead["expected"] == dead["received"] == report["publish"]["malformed"] > 0
    for hop in ("publish_to_bridge", "publish_to_kafka", "publish_to_alert", "publish_to_stored"):
        latency = report["latency"][hop]
        assert latency is not None and latency["samples"] > 0, hop
        assert 0 <= latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"], hop
    assert report["latency"]["publish_to_kafka"]["samples"] == published  # one lost, one twice

    alerts = report["alerts"]
    assert pipeline.breaches == report["ground_truth"]["breaching_readings"] > 0
    assert (alerts["received"], alerts["unique"], alerts["duplicates"]) == (
        pipeline.breaches + 2,
        pipeline.breaches + 1,
        1,
    )
    assert (alerts["correct"], alerts["false_positives"]) == (pipeline.breaches, 1)
    assert alerts["precision"] == round(pipeline.breaches / (pipeline.breaches + 1), 6)
    assert (
        alerts["false"][0]["reading_ts"] == pipeline.first_alert.reading_ts if pipeline.first_alert else False
    )
    assert report["ground_truth"]["episodes"]["warning"] > 0
    assert alerts["recall"] == 1.0 and alerts["missed_episodes"] == 0
