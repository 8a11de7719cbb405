"""Consumer options: static group membership ids, and fetch waits from the latency budget."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from thermoflow import kafka
from thermoflow.kafka import group_instance_id
from thermoflow.settings import ThermoflowSettings


@pytest.fixture(autouse=True)
def _no_instance_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THERMOFLOW_INSTANCE", raising=False)
    monkeypatch.delenv("THERMOFLOW_INSTANCE_ID", raising=False)


def test_a_process_started_on_its_own_stays_a_dynamic_member() -> None:
    # Two such processes on one host would share any derived id, and fence each other.
    assert group_instance_id(ThermoflowSettings(), "thermoflow-sink") is None


def test_under_thermoflow_run_each_instance_has_its_own_id_the_same_after_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("THERMOFLOW_INSTANCE", "0")
    first = group_instance_id(ThermoflowSettings(), "thermoflow-sink")
    again = group_instance_id(ThermoflowSettings(), "thermoflow-sink")  # a restarted child: same parent
    monkeypatch.setenv("THERMOFLOW_INSTANCE", "1")
    second = group_instance_id(ThermoflowSettings(), "thermoflow-sink")
    assert first is not None and first == again
    assert second is not None and second != first
    assert str(os.getppid()) in first  # another `thermoflow run` on this host gets other ids


def test_an_explicit_instance_id_wins_and_no_group_means_no_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THERMOFLOW_INSTANCE", "3")
    monkeypatch.setenv("THERMOFLOW_INSTANCE_ID", "sink-pod-7")
    assert group_instance_id(ThermoflowSettings(), "thermoflow-sink") == "sink-pod-7"
    assert group_instance_id(ThermoflowSettings(), None) is None


async def test_a_consumers_fetch_waits_the_latency_budget_unless_told() -> None:
    # Kafka answers a fetch at kafka_fetch_min_bytes or at this wait: idle, it is how often a
    # consumer asks (50 times a second at the old fixed 20 ms, 3.5% of a core per consumer).
    budget = kafka.consumer(ThermoflowSettings(latency_budget=0.2), "t", group_id="g")
    fixed = kafka.consumer(ThermoflowSettings(latency_budget=0.2, kafka_fetch_wait=0.02), "t", group_id="g")
    default = kafka.consumer(ThermoflowSettings(), "t", group_id="g")
    waits = [consumer._fetch_max_wait_ms for consumer in (budget, fixed, default)]
    for consumer in (budget, fixed, default):
        await consumer.stop()  # never started: only marks it closed
    assert waits == [200, 20, 100]


@pytest.mark.parametrize("bad", ["0", "-1", "11", "nan", "inf", "a lot"])
def test_a_latency_budget_out_of_range_fails_fast_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("THERMOFLOW_LATENCY_BUDGET", bad)
    with pytest.raises(ValidationError, match="latency_budget"):
        ThermoflowSettings()
