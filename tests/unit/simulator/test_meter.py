"""The meter's reading columns: a fetch decoded at once keeps exactly what decoding record by record keeps;
and the per-component hops it derives from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from thermoflow.events import AlertEvent, Reading, encode
from thermoflow.settings import ThermoflowSettings
from thermoflow.simulator.measure import KafkaMeter


@dataclass
class Record:
    """The two fields the meter reads, as aiokafka's raw records and ConsumerRecords both have them."""

    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def _meter() -> KafkaMeter:
    return KafkaMeter(
        settings=ThermoflowSettings(),
        device_index={"rack-0": 0, "rack-1": 1},
        mqtt_topics=set(),
        since=1000.0,
    )


def _reading(device: str, ts: float, seq: int | None) -> bytes:
    return encode(Reading(device_id=device, value=21.5, ts=ts, seq=seq, received_at=ts + 0.25))


def test_a_clean_fetch_keeps_every_reading_of_the_fleet_with_its_hops() -> None:
    meter = _meter()
    meter._readings(
        [
            Record(_reading("rack-1", 1001.5, 3), 1_001_750),
            Record(_reading("rack-0", 1002.0, None), 1_002_500),
            Record(_reading("other-9", 1002.0, 1), 1_002_500),  # not this fleet
            Record(_reading("rack-0", 999.0, 0), 999_500),  # before the run
        ]
    )
    devices, seqs, ts = meter.received_arrays()
    assert devices.tolist() == [1, 0]
    assert seqs.tolist() == [3, -1]
    assert ts.tolist() == [1001.5, 1002.0]
    assert np.allclose(np.frombuffer(meter.to_bridge), [0.25, 0.25])
    assert np.allclose(np.frombuffer(meter.to_kafka), [0.25, 0.5])
    assert (meter.foreign, meter.undecodable) == (2, 0)


def test_a_bad_record_costs_only_itself() -> None:
    meter = _meter()
    meter._readings(
        [
            Record(_reading("rack-0", 1001.0, 0), 1_001_100),
            Record(b'{"device_id": "rack-1"', 1_001_200),  # truncated
            Record(None, 1_001_300),  # a tombstone
            Record(_reading("rack-1", 1001.4, 7) + b"," + _reading("rack-1", 1001.5, 8), 1_001_400),  # two
            Record(_reading("rack-1", 1001.6, 9), 1_001_600),
        ]
    )
    devices, seqs, _ = meter.received_arrays()
    assert devices.tolist() == [0, 1]
    assert seqs.tolist() == [0, 9]
    assert np.allclose(np.frombuffer(meter.to_kafka), [0.1, 0.0])
    assert meter.undecodable == 3


def _alert(device: str, reading_ts: float) -> bytes:
    return encode(
        AlertEvent(
            alert_id=f"{device}-{reading_ts}", device_id=device, metric="temperature", rule_id="r",
            severity="critical", condition="above", threshold=30.0, value=31.0, reading_ts=reading_ts,
            detected_at=reading_ts,
        )
    )  # fmt: skip


def test_each_component_s_own_share_is_measured_from_the_record_timestamps_before_it() -> None:
    meter = _meter()
    meter._readings(  # received_at is ts + 0.25
        [
            Record(_reading("rack-1", 1001.5, 3), 1_001_800),  # bridge 50 ms
            Record(_reading("rack-0", 1002.0, 4), 1_002_400),  # bridge 150 ms
            Record(_reading("rack-0", 1002.5, 5), 1_002_800),  # bridge 50 ms
        ]
    )
    meter._alerts(
        [
            Record(_alert("rack-0", 1002.0), 1_002_520),  # 120 ms after its reading's record
            Record(_alert("rack-1", 1001.5), 1_002_100),  # 300 ms after
            Record(_alert("rack-1", 1001.7), 1_002_100),  # its reading was never seen: no figure
        ]
    )
    assert np.allclose(np.sort(meter.kafka_to_alert()), [0.12, 0.3])
    hops = meter.latency(with_ts=True)
    assert hops["kafka_to_alert"]["samples"] == 2
    assert hops["kafka_to_alert"]["max_ms"] == 300.0
    assert hops["bridge_to_kafka"]["samples"] == 3
    assert hops["bridge_to_kafka"]["p50_ms"] == 50.0
    assert hops["publish_to_alert"]["samples"] == 3


def test_no_alert_or_no_reading_gives_no_processor_figure() -> None:
    meter = _meter()
    assert meter.kafka_to_alert().size == 0
    meter._alerts([Record(_alert("rack-0", 1002.0), 1_002_520)])
    assert meter.kafka_to_alert().size == 0
    assert meter.latency(with_ts=True)["kafka_to_alert"] is None
