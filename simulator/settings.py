"""Settings of `thermoflow simulate`: flags, then ``THERMOFLOW_*`` variables, then defaults.

One frozen class on top of the shared connection settings; the field names are the flag
names (``--total-rate`` is ``total_rate``, ``THERMOFLOW_TOTAL_RATE``), so a bad value is
reported under the flag a user typed.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from thermoflow.settings import ThermoflowSettings
from thermoflow.simulator.anomalies import parse_kinds
from thermoflow.simulator.payloads import check_template
from thermoflow.simulator.profiles import parse_mix

DEFAULT_TOPIC_TEMPLATE = "sensors/{device_id}/{metric}"
_RUN_TAG = secrets.token_hex(3)


class SimulatorSettings(ThermoflowSettings):
    """What to simulate, how fast, and what to measure."""

    # Off by default, unlike the pipeline's components: a load test usually runs on the same
    # host as `thermoflow run`, whose instances take 9108 and up.
    http_port: int | None = Field(
        0,
        ge=0,
        le=65535,
        description="port of the simulator's /metrics, /healthz and /readyz; 0 (the default) serves none",
    )

    devices: int = Field(100, ge=1, le=1_000_000, description="number of simulated devices")
    rate: float | None = Field(None, gt=0, le=1000, description="readings per second per device [1]")
    total_rate: float | None = Field(None, gt=0, description="readings per second over the fleet")
    duration: float | None = Field(None, gt=0, description="seconds to publish (default: until stopped)")
    qos: Literal[0, 1] = Field(1, description="MQTT QoS of the publishes")
    format: Literal["json", "number", "senml"] = Field("json", description="payload format")
    topic_template: str = Field(DEFAULT_TOPIC_TEMPLATE, description="MQTT topic per device")
    seed: int = Field(1, ge=0, description="random seed: the same seed, the same fleet and anomalies")
    profiles: str = Field("freezer,coldroom,rack,greenhouse,outdoor", description="profile mix")
    time_scale: float = Field(1.0, gt=0, description="simulated seconds per real second (daily cycle)")

    anomaly_rate: float = Field(2.0, ge=0, description="anomalies per device per hour")
    anomaly_kinds: str = Field("all", description="anomaly kinds injected at --anomaly-rate")
    anomaly_schedule: Path | None = Field(None, description="YAML file of explicit anomalies")

    rules: Path | None = Field(None, description="rules file for the ground truth [processors/rules.yaml]")
    incident_gap: float | None = Field(None, gt=0, description="seconds between breaches of one episode")
    detection_grace: float = Field(
        60.0,
        ge=0,
        description="seconds after an anomaly's end in which an incident still detects it (and is not"
        " false): the rate detector sees the return to normal for one rate window",
    )

    connections: int | None = Field(None, ge=1, le=100_000, description="MQTT connections [min(10, devices)]")
    ramp: float = Field(0.0, ge=0, description="seconds over which connections are opened")
    inflight: int = Field(256, ge=1, le=65535, description="QoS 1 unacknowledged publishes per connection")
    max_backlog: int = Field(200_000, ge=1, description="queued publishes before the pacer holds back")
    client_prefix: str | None = Field(
        None, min_length=1, description="MQTT client id prefix [thermoflow-sim-<pid>-<random>]"
    )
    keepalive: int = Field(60, ge=5, le=65535, description="MQTT keepalive seconds")

    @field_validator("topic_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value)

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, value: str) -> str:
        parse_mix(value)
        return value

    @field_validator("anomaly_kinds")
    @classmethod
    def _kinds(cls, value: str) -> str:
        parse_kinds(value)
        return value

    @model_validator(mode="after")
    def _one_rate(self) -> Self:
        if self.rate is not None and self.total_rate is not None:
            raise ValueError("give --rate (per device) or --total-rate (fleet), not both")
        if self.connections is not None and self.connections > self.devices:
            raise ValueError(f"--connections ({self.connections}) cannot exceed --devices ({self.devices})")
        if self.time_scale > 1 and self.duration is None:
            # A fast clock runs ahead of real time, and the bridge refuses readings from the future.
            raise ValueError("--time-scale above 1 needs --duration (the fleet's clock then ends at now)")
        return self

    @property
    def clock_start(self) -> float:
        """Seconds before now the fleet's clock starts: with ``time_scale`` > 1 it runs fast, so it
        starts early enough that its last reading is stamped now and none lies in the future."""
        return (self.duration or 0.0) * max(0.0, self.time_scale - 1.0)

    @property
    def client_id_prefix(self) -> str:
        """Unique per process unless given: two simulators with one client id would kick each other off."""
        return self.client_prefix or f"thermoflow-sim-{os.getpid()}-{_RUN_TAG}"

    @property
    def connection_count(self) -> int:
        return self.connections if self.connections is not None else min(10, self.devices)

    @property
    def per_device_rate(self) -> float:
        if self.total_rate is not None:
            return self.total_rate / self.devices
        return self.rate if self.rate is not None else 1.0

    @property
    def fleet_rate(self) -> float:
        return self.per_device_rate * self.devices

    @property
    def episode_gap(self) -> float:
        """Default: 30 s, and at least three readings' worth of time."""
        if self.incident_gap is not None:
            return self.incident_gap
        return max(30.0, 3.0 / self.per_device_rate)
