"""Hostile payloads through the real bridge, on real Mosquitto and Kafka.

Every message must end as exactly its readings or exactly one dead letter, the bridge must ack
every message (a good sentinel published after the bad ones arrives, and the ``acked`` counter
reaches the number sent) and it must never crash. Each defect of issue 11 on the bridge's input
side has its regression test here: on the code before the fix each one stalls, loses its dead
letter, or lets through a reading the sink cannot store.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from aiokafka import ConsumerRecord
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import Endpoints
from tests.integration.ingest.helpers import KafkaReader, bridge_settings, mqtt_prefix, publish, wait_for
from tests.support.hostile import catalogue, payloads, stable_outcome
from thermoflow import topics
from thermoflow.events import decode_reading, parse_dead_letter_headers
from thermoflow.ingest.bridge import run_bridge
from thermoflow.ingest.settings import IngestSettings
from thermoflow.metrics import Metrics
from thermoflow.settings import ThermoflowSettings

SENTINEL = b'{"value": -18.5}'


@dataclass
class Outcome:
    """What came out of the bridge for one batch, by MQTT topic."""

    readings: Counter[str]
    letters: dict[str, list[ConsumerRecord[bytes, bytes]]]
    metrics: Metrics


def _topic_of(record: ConsumerRecord[bytes, bytes]) -> str:
    value: bytes = dict(record.headers)[topics.HEADER_MQTT_TOPIC]
    return value.decode()


async def through_bridge(
    endpoints: Endpoints,
    config: IngestSettings,
    messages: list[tuple[str, bytes]],
    *,
    readings: int,
    letters: int,
    timeout: float = 120,
) -> Outcome:
    """Publish ``messages`` and a sentinel at QoS 1 through a bridge; wait for all of it in Kafka."""
    sentinel = f"{mqtt_prefix(config)}/sentinel/temperature"
    stop = asyncio.Event()
    metrics = Metrics("bridge")
    bridge = asyncio.create_task(run_bridge(config, stop=stop, metrics=metrics))
    try:
        async with KafkaReader(
            endpoints.kafka_bootstrap, config.readings_topic, config.deadletter_topic
        ) as kafka:
            await wait_for(
                lambda: metrics.counter("mqtt_connects") > 0, timeout=30, what="the bridge connects"
            )
            await asyncio.sleep(1.0)  # subscribed (the QoS 1 session exists from then on)
            await asyncio.to_thread(publish, endpoints, [*messages, (sentinel, SENTINEL)])
            got_readings = kafka.records[config.readings_topic]
            got_letters = kafka.records[config.deadletter_topic]

            def everything() -> bool:
                assert not bridge.done(), bridge  # it must never crash
                return len(got_readings) >= readings + 1 and len(got_letters) >= letters

            await kafka.until(
                everything, timeout=timeout, what=f"{readings} readings, {letters} dead letters"
            )
            # Every message acked to the broker: nothing left pending behind a bad one.
            await wait_for(lambda: metrics.counter("acked") >= len(messages) + 1, timeout=30, what="all acks")
            await kafka.settle(1.0)  # nothing more than expected comes
            assert not bridge.done()
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    for record in got_readings:  # as the sink decodes them, and storable
        reading = decode_reading(record.value)
        assert (
            reading.received_at - config.ts_max_age <= reading.ts <= reading.received_at + config.ts_max_ahead
        )
        assert reading.device_id.isprintable()
        assert reading.seq is None or -(2**63) <= reading.seq < 2**63
    by_topic: Counter[str] = Counter(_topic_of(r) for r in got_readings)
    assert by_topic.pop(sentinel) == 1, "the sentinel after the bad messages must arrive, once"
    dead: dict[str, list[ConsumerRecord[bytes, bytes]]] = {}
    for record in got_letters:
        dead.setdefault(parse_dead_letter_headers(record.headers).source, []).append(record)
    assert metrics.counter("received") == metrics.counter("acked") == len(messages) + 1
    return Outcome(by_topic, dead, metrics)


def _check_dead_letter(record: ConsumerRecord[bytes, bytes], payload: bytes, limit: int) -> None:
    """The original bytes, or their first ``limit`` with the size and hash of the whole."""
    headers = dict(record.headers)
    if len(payload) <= limit:
        assert record.value == payload and topics.HEADER_TRUNCATED not in headers
        return
    assert record.value == payload[:limit]
    assert headers[topics.HEADER_TRUNCATED] == b"true"
    assert headers[topics.HEADER_ORIGINAL_SIZE] == str(len(payload)).encode()
    assert headers[topics.HEADER_ORIGINAL_SHA256] == hashlib.sha256(payload).hexdigest().encode()


# -- one regression test per defect --------------------------------------------------------------

DEFECTS = [
    ("int of 401 digits", b"1" + b"0" * 400, "too large for a number"),
    ("30,000 nested arrays", b"[" * 30_000 + b"]" * 30_000, "nesting is deeper than 32 levels"),
    ("10 MB payload", b"7" * 10_000_000, "exceeds the limit of 65536"),
    (
        "SenML pack of 100,000 records",
        b"[" + b",".join([b'{"n":"temperature","u":"Cel","v":1.5}'] * 100_000) + b"]",
        "exceeds the limit of 65536",
    ),
    ("ts 1e19", b'{"value":1.5,"ts":1e19}', "`ts`"),
    ("seq past int64", b'{"value":1.5,"seq":9223372036854775808}', "`seq`"),
]


@pytest.mark.parametrize(("payload", "words"), [d[1:] for d in DEFECTS], ids=[d[0] for d in DEFECTS])
async def test_a_poison_message_is_dead_lettered_and_the_readings_after_it_flow(
    endpoints: Endpoints,
    settings: ThermoflowSettings,
    new_topic: Callable[..., str],
    payload: bytes,
    words: str,
) -> None:
    config = bridge_settings(settings, new_topic)
    prefix = mqtt_prefix(config)
    now = time.time()
    good = [(f"{prefix}/ok-{i % 20}/temperature", b'{"value":%d,"ts":%r}' % (i, now - i)) for i in range(300)]
    poison = f"{prefix}/poison/temperature"
    out = await through_bridge(
        endpoints, config, [good[0], (poison, payload), *good[1:]], readings=300, letters=1, timeout=60
    )
    assert sum(out.readings.values()) == 300 and poison not in out.readings
    [letter] = out.letters[poison]
    assert words in parse_dead_letter_headers(letter.headers).error
    _check_dead_letter(letter, payload, config.deadletter_max_bytes)


# -- the catalogue ---------------------------------------------------------------------------------


async def test_every_catalogue_case_ends_as_its_readings_or_one_dead_letter(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    config = bridge_settings(settings, new_topic)
    prefix = mqtt_prefix(config)
    cases = catalogue(time.time())
    messages = [
        (f"{prefix}/{case.device or f'case-{i:03d}'}/temperature", case.payload)
        for i, case in enumerate(cases)
    ]
    out = await through_bridge(
        endpoints,
        config,
        messages,
        readings=sum(case.readings for case in cases),
        letters=sum(1 for case in cases if not case.readings),
    )
    problems = []
    for (topic, payload), case in zip(messages, cases, strict=True):
        letters = [
            r
            for source, records in out.letters.items()
            if topic.startswith(source.rstrip("…"))
            for r in records
        ]
        if out.readings[topic] != case.readings or len(letters) != (0 if case.readings else 1):
            problems.append(f"{case.name}: {out.readings[topic]} readings, {len(letters)} dead letters")
            continue
        if letters:
            reason = parse_dead_letter_headers(letters[0].headers).error
            if case.words not in reason:
                problems.append(f"{case.name}: reason {reason!r} lacks {case.words!r}")
            _check_dead_letter(letters[0], payload, config.deadletter_max_bytes)
    assert not problems, "\n".join(problems)
    assert sum(out.readings.values()) == sum(case.readings for case in cases)
    assert sum(len(records) for records in out.letters.values()) == sum(
        1 for case in cases if not case.readings
    )


# -- hypothesis ------------------------------------------------------------------------------------


@settings(
    max_examples=3,
    phases=[Phase.generate],  # each example runs a bridge: no shrinking, the failure prints the batch
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(batch=st.lists(payloads, min_size=150, max_size=150))
def test_hypothesis_payloads_end_as_exactly_the_readings_and_dead_letters_the_codec_promises(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str], batch: list[bytes]
) -> None:
    config = bridge_settings(settings, new_topic)
    prefix = mqtt_prefix(config)
    now = time.time()
    messages, expected = [], {}
    for i, payload in enumerate(batch):
        topic = f"{prefix}/h{i:03d}/temperature"
        count = stable_outcome(payload, device=f"h{i:03d}", now=now)
        if count is not None:
            messages.append((topic, payload))
            expected[topic] = count
    readings = sum(expected.values())
    letters = sum(1 for count in expected.values() if count == 0)
    out = asyncio.run(through_bridge(endpoints, config, messages, readings=readings, letters=letters))
    assert dict(out.readings) == {topic: n for topic, n in expected.items() if n}
    assert {source: len(records) for source, records in out.letters.items()} == {
        topic: 1 for topic, n in expected.items() if n == 0
    }
    for records in out.letters.values():
        payload = dict(messages)[parse_dead_letter_headers(records[0].headers).source]
        _check_dead_letter(records[0], payload, config.deadletter_max_bytes)
