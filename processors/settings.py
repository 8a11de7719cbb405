"""The processors component's settings: flags, then ``THERMOFLOW_*`` environment variables, then defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from thermoflow.rules import DEFAULT_RULES_FILE
from thermoflow.settings import ThermoflowSettings


class ProcessorSettings(ThermoflowSettings):
    """Settings of `thermoflow process`.

    The source, sink and dead-letter topics are the shared ``readings_topic``, ``alerts_topic``
    and ``deadletter_topic`` (``THERMOFLOW_READINGS_TOPIC`` ...).
    """

    processor_group: str = Field(
        "thermoflow-processors",
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="faust app id, which is the Kafka consumer group the workers share",
    )
    rules_file: Path | None = Field(
        None, description="YAML threshold rules, reloaded when the file changes [the shipped example]"
    )
    rules_poll_interval: float = Field(1.0, gt=0, description="seconds between checks of the rules file")
    workers: int = Field(1, ge=1, le=64, description="worker processes to run")
    max_batch: int = Field(20_000, ge=1, le=1_000_000, description="readings per fetch from Kafka at most")
    max_chunks: int = Field(
        16,
        ge=1,
        le=1024,
        description="fetches from Kafka per batch at most (each up to max_batch readings, all partitions)",
    )
    max_wait: float | None = Field(
        None,
        gt=0,
        le=60,
        description="seconds between the batches a worker cuts from what its fetches brought"
        " [latency_budget]",
    )
    commit_interval: float = Field(
        1.0,
        gt=0,
        le=60,
        description="seconds between faust's own commit rounds (the readings' offsets are committed"
        " after each batch, or with each state write)",
    )
    state_interval: float = Field(
        1.0,
        gt=0,
        le=60,
        description="seconds between writes of the device detectors' state to Kafka; the readings"
        " processed since the last write are committed with the next (a crash replays them)",
    )
    session_timeout: float = Field(
        10.0,
        ge=6,
        le=300,
        description="seconds before a silent (killed) worker's partitions go to the others",
    )
    alert_window: float = Field(
        1.0,
        gt=0,
        description="at most one alert per device, rule and batch and per this many seconds of device"
        " time: a backlog's breaches stay continuous (keep it well below resolve_after)",
    )
    watermark_interval: float = Field(
        1.0,
        gt=0,
        le=60,
        description="seconds between the watermarks sent to the alerts topic, and between offline checks",
    )
    idle_after: float = Field(
        30.0,
        gt=0,
        description="seconds a caught-up readings partition must stay quiet before it counts as idle"
        " (its watermark then follows the clock, so incidents resolve when the fleet falls silent)",
    )
    ingest_silent_after: float = Field(
        60.0,
        gt=0,
        le=7 * 86_400,
        description="seconds a caught-up readings partition (or all of a worker's) must receive nothing"
        " before one `ingest_silent` alert is raised for it",
    )
    function_retries: int = Field(3, ge=1, le=20, description="attempts per batch before it is dead-lettered")
    function_backoff: float = Field(0.2, ge=0, description="first retry delay in seconds (doubles each time)")
    functions: str = Field(
        "", description="extra Python modules to import, comma-separated: each registers its functions"
    )
    web_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="serve faust's web views on this port (worker i uses port + i); none when not set",
    )
    data_dir: Path | None = Field(
        None, description="faust data directory root (worker i uses <dir>/worker-i); a temp dir when not set"
    )
    instance: int = Field(
        0, ge=0, le=10_000, description="this process's number under `thermoflow run` (THERMOFLOW_INSTANCE)"
    )
    log_level: str = Field("INFO", description="log level")

    @property
    def batch_wait(self) -> float:
        """Seconds between batches at a low rate: ``max_wait``, else the latency budget.

        A batch is cut ``batch_wait`` after its oldest record reached Kafka, or at
        ``max_chunks`` fetches (:func:`~thermoflow.processors.batching.take_batches`). Every
        batch has a fixed cost: the detectors' 0.5 ms whatever its size
        (``bench/bench_batch_cost.py``), and the worker's sends, acks and bookkeeping. At a
        steady 20,000 readings/s half the budget (50 ms) cost the worker 10.2-11.2 µs of CPU per
        reading instead of 9.1-9.7 and did not lower the p99 publish -> alert (measured under
        `thermoflow run`). faust's fetch returns as soon as Kafka holds a record, so a reading
        waits up to ``batch_wait`` here; under load ``max_chunks`` fills first.
        """
        return self.max_wait if self.max_wait is not None else self.latency_budget

    @property
    def function_modules(self) -> list[str]:
        """The modules named by ``functions``."""
        return [name.strip() for name in self.functions.split(",") if name.strip()]

    @property
    def state_topic(self) -> str:
        """The compacted topic of the detectors' per-device state, partitioned like the readings."""
        return f"{self.processor_group}-device-state"

    @property
    def rules_path(self) -> Path:
        """The rules file in use: ``rules_file``, else the shipped ``processors/rules.yaml``."""
        return self.rules_file if self.rules_file is not None else DEFAULT_RULES_FILE
