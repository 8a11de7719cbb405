"""The ingest component's settings: flags, then ``THERMOFLOW_*`` environment variables, then defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from thermoflow.ingest.codecs import PayloadLimits
from thermoflow.ingest.mapping import TopicTemplate, TopicTemplateError, check_filter
from thermoflow.settings import ThermoflowSettings

MqttVersion = Literal["5", "3.1.1"]


class IngestSettings(ThermoflowSettings):
    """Settings of `thermoflow bridge` and `thermoflow sink`.

    The Kafka topics are the shared ``readings_topic`` and ``deadletter_topic``
    (``THERMOFLOW_READINGS_TOPIC`` ...).
    """

    # -- the bridge ----------------------------------------------------------------------------
    mqtt_topics: str = Field(
        "sensors/+/temperature", min_length=1, description="MQTT topic filters to subscribe, comma-separated"
    )
    topic_template: str = Field(
        "sensors/{device_id}/{metric}",
        description="how to read device_id and metric out of an MQTT topic ({device_id}, {metric})",
    )
    mqtt_client_id: str = Field(
        "thermoflow-bridge",
        min_length=1,
        max_length=128,
        description="the bridge's MQTT client id: fixed, so a restarted bridge resumes its session",
    )
    mqtt_version: MqttVersion = Field("5", description="MQTT protocol version, 5 or 3.1.1")
    mqtt_share_group: str | None = Field(
        None,
        pattern=r"^[^/+#$]+$",
        description="MQTT 5 shared-subscription group: bridges in one group split the messages",
    )
    mqtt_session_expiry: int = Field(
        7 * 24 * 3600,
        ge=1,
        description="seconds the broker keeps the bridge's session while it is away (MQTT 5)",
    )
    mqtt_receive_maximum: int = Field(
        2_000,
        ge=1,
        le=65_535,
        description="QoS 1 messages unacked at the bridge at once: asked of the broker (MQTT 5) and kept by"
        " the bridge, so it bounds memory and what a kill -9 of the bridge leaves in Kafka unacked",
    )
    mqtt_keepalive: int = Field(30, ge=5, le=65_535, description="MQTT keepalive in seconds")
    max_payload_bytes: int = Field(
        65_536, ge=1, description="larger payloads are dead-lettered without being parsed"
    )
    deadletter_max_bytes: int = Field(
        256 * 1024,
        ge=1024,
        le=512 * 1024,
        description="a dead letter keeps at most this many bytes of its payload (headers give the"
        " original size and SHA-256): under Kafka's 1 MiB, so it always fits",
    )
    max_json_depth: int = Field(
        32, ge=2, le=200, description="deeper-nested JSON payloads are dead-lettered (SenML needs 2)"
    )
    senml_max_records: int = Field(
        1_000, ge=1, le=100_000, description="SenML packs with more records are dead-lettered"
    )
    ts_max_age: float = Field(
        7 * 86_400.0,
        gt=0,
        description="seconds a reading's `ts` may lie before its receive time; older ones are dead-lettered",
    )
    ts_max_ahead: float = Field(
        600.0,
        ge=0,
        description="seconds a reading's `ts` may lie after its receive time (device clocks run fast)",
    )
    bridge_max_pending: int = Field(
        2_000,
        ge=1,
        description="messages of any QoS held before the bridge stops reading its socket (the window is"
        " the smaller of this and mqtt_receive_maximum)",
    )
    bridge_linger: float | None = Field(
        None,
        ge=0,
        le=1,
        description="seconds at most the bridge gathers messages before producing them, unless half its"
        " window came first: fewer, larger Kafka requests and PUBACK writes [half of latency_budget]",
    )
    metrics_interval: float = Field(10.0, gt=0, description="seconds between metrics log lines")

    # -- the sink ------------------------------------------------------------------------------
    sink_group: str = Field(
        "thermoflow-sink", min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="the sink's consumer group"
    )
    sink_batch: int = Field(
        20_000, ge=1, le=1_000_000, description="readings per database transaction at most"
    )
    sink_writers: int = Field(
        2, ge=1, le=16, description="database connections writing batches at once (offsets commit in order)"
    )
    sink_wait: float = Field(0.2, gt=0, le=60, description="seconds to wait to fill a batch")
    sink_commit_every: float = Field(
        0.5,
        ge=0,
        le=60,
        description="seconds between Kafka offset commits at most often, of the batches stored"
        " meanwhile (0: after every batch; a crash replays what is stored and not committed, and"
        " stores none of it twice)",
    )

    log_level: str = Field("INFO", description="log level")

    @field_validator("topic_template")
    @classmethod
    def _template_is_usable(cls, template: str) -> str:
        try:
            TopicTemplate(template)
        except TopicTemplateError as exc:
            raise ValueError(str(exc)) from None
        return template

    @field_validator("mqtt_topics")
    @classmethod
    def _filters_are_valid(cls, filters: str) -> str:
        for topic_filter in _split(filters):
            check_filter(topic_filter)
        if not _split(filters):
            raise ValueError("give at least one topic filter")
        return filters

    @property
    def linger(self) -> float:
        """Seconds the bridge gathers a batch at most: bridge_linger, or half the latency budget.

        Under load half the window fills first and the batch goes at once; at a low rate the
        bridge waits, so a Kafka request and a PUBACK write carry many messages: each flush costs
        about 1.5 ms of CPU whatever its size (bench_bridge --steady 5000: 24.9, 18.8 and 16.0 µs
        per reading with 25, 50 and 75 ms). Half, not the ¾ a consumer's fetch waits: with ¾,
        publish → stored at 5,000/s had a p99 of 273 ms against 192 ms (probe_load, one run each).
        """
        return self.bridge_linger if self.bridge_linger is not None else 0.5 * self.latency_budget

    @property
    def payload_limits(self) -> PayloadLimits:
        """The limits the bridge's codecs check (:class:`thermoflow.ingest.codecs.PayloadLimits`)."""
        return PayloadLimits(
            max_bytes=self.max_payload_bytes,
            max_depth=self.max_json_depth,
            max_records=self.senml_max_records,
            max_age=self.ts_max_age,
            max_ahead=self.ts_max_ahead,
        )

    @property
    def topic_filters(self) -> list[str]:
        """The filters to subscribe, with the shared-subscription prefix when a group is set."""
        filters = _split(self.mqtt_topics)
        if self.mqtt_share_group:
            return [f"$share/{self.mqtt_share_group}/{f}" for f in filters]
        return filters


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
