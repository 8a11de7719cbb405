"""Static group membership ids: stable across a restart, distinct between instances, opt-in."""

from __future__ import annotations

import os

import pytest

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
