"""The alerts component's settings: one frozen class, flags then ``THERMOFLOW_*`` env, then defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator

from thermoflow.settings import ThermoflowSettings

#: The notifier's own compacted topic: the latest lifecycle state of every (device, rule).
NOTIFIER_STATE_TOPIC = "telemetry.alerts.notifier-state"
_GROUP_NAME = r"[A-Za-z0-9._-]+"


class AlertsSettings(ThermoflowSettings):
    """Settings of `thermoflow alerts store` and `thermoflow alerts notify`.

    The source and dead-letter topics are the shared ``alerts_topic`` and ``deadletter_topic``.
    """

    store_group: str = Field("thermoflow-alerts-store", description="consumer group of the store")
    notify_group: str = Field("thermoflow-alerts-notify", description="consumer group of the notifier")
    notifier_state_topic: str = Field(
        NOTIFIER_STATE_TOPIC, description="compacted topic holding the notifier's incident state"
    )

    # Incident lifecycle, shared by the store and the notifier.
    resolve_after: float = Field(
        300.0, gt=0, description="seconds without a breach before an incident resolves"
    )
    repeat_interval: float = Field(
        3600.0, gt=0, description="seconds between repeat notifications while an incident fires"
    )
    sweep_interval: float = Field(
        5.0, gt=0, description="seconds between checks for incidents to resolve (and repeats to send)"
    )

    # Store batching.
    store_batch_size: int = Field(
        20_000, ge=1, le=100_000, description="most alert events per database transaction"
    )
    store_batch_wait: float = Field(0.5, ge=0, description="seconds to wait to fill a store batch")
    alerts_commit_every: float = Field(
        0.5,
        ge=0,
        le=60,
        description="seconds between the store's and the notifier's Kafka offset commits at most often,"
        " of the batches done meanwhile (0: after every batch; a crash replays what is done and not"
        " committed, and neither stores nor notifies any of it twice)",
    )

    # Notifier routing and channels.
    notify_routes: Path | None = Field(
        None, description="YAML file: channels and the severities each one gets (default: log only)"
    )
    webhook_url: str | None = Field(None, description="a generic webhook channel that gets every severity")
    webhook_secret: SecretStr | None = Field(
        None, description="shared secret of the webhook's HMAC signature"
    )
    slack_webhook_url: SecretStr | None = Field(
        None, description="a Slack incoming webhook for critical alerts"
    )
    notify_log: bool = Field(True, description="write every notification as a JSON line to stdout")
    notify_retries: int = Field(4, ge=1, le=20, description="attempts per notification and channel")
    notify_backoff: float = Field(
        0.5, ge=0, description="first retry delay in seconds (doubles, with jitter)"
    )
    notify_backoff_max: float = Field(10.0, ge=0, description="longest retry delay in seconds")
    notify_timeout: float = Field(10.0, gt=0, description="seconds one send may take")
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open a channel's breaker")
    breaker_reset: float = Field(30.0, gt=0, description="seconds an open breaker waits before a probe")
    notify_concurrency: int = Field(64, ge=1, le=1024, description="sends in flight per channel")

    # Alerts on the pipeline itself (device `pipeline`), raised by the notifier: 0 turns one off.
    deadletter_rate_alert: float = Field(
        10.0,
        ge=0,
        description="dead letters per minute (over pipeline_alert_window) that raise a `deadletter_rate`"
        " incident; 0: never",
    )
    consumer_lag_alert: int = Field(
        100_000,
        ge=0,
        description="records a watched consumer group may lag behind for pipeline_alert_window before"
        " a `consumer_lag` incident; 0: never",
    )
    consumer_lag_groups: str | None = Field(
        None,
        pattern=rf"^{_GROUP_NAME}(,{_GROUP_NAME})*$",
        description="consumer groups whose lag is watched, comma-separated [the pipeline's: processor_group,"
        " sink_group, store_group, notify_group]",
    )
    # The other components' groups, under their own settings' names (THERMOFLOW_PROCESSOR_GROUP,
    # THERMOFLOW_SINK_GROUP): one environment names a group for its component and for the lag watch.
    processor_group: str = Field(
        "thermoflow-processors",
        pattern=rf"^{_GROUP_NAME}$",
        description="the processors' consumer group (their lag is watched)",
    )
    sink_group: str = Field(
        "thermoflow-sink",
        pattern=rf"^{_GROUP_NAME}$",
        description="the sink's consumer group (its lag is watched)",
    )
    breaker_open_alert: float = Field(
        120.0,
        ge=0,
        description="seconds a channel's circuit breaker may stay open before a `breaker_open` incident;"
        " 0: never",
    )
    pipeline_alert_window: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="seconds the dead-letter rate is averaged over, and that lag must stay above (then"
        " below) its limit before its incident opens (resolves)",
    )
    pipeline_check_interval: float = Field(
        10.0, gt=0, le=3_600, description="seconds between the notifier's checks of the pipeline itself"
    )

    @model_validator(mode="after")
    def _webhook_has_secret(self) -> Self:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError(
                "webhook_url needs webhook_secret (THERMOFLOW_WEBHOOK_SECRET) to sign its bodies"
            )
        if self.notify_routes is not None and not self.notify_routes.is_file():
            raise ValueError(f"notify_routes: no such file {str(self.notify_routes)!r}")
        return self

    @model_validator(mode="after")
    def _checks_fit_the_window(self) -> Self:
        if self.pipeline_check_interval > self.pipeline_alert_window:
            raise ValueError(
                f"pipeline_check_interval ({self.pipeline_check_interval:g}s) must not exceed"
                f" pipeline_alert_window ({self.pipeline_alert_window:g}s): a window needs checks inside it"
            )
        return self

    @property
    def lag_groups(self) -> list[str]:
        """The consumer groups whose lag is watched, each once: ``consumer_lag_groups`` when set, else
        the pipeline's own (processors, sink, alert store, notifier)."""
        if self.consumer_lag_groups:
            return list(dict.fromkeys(self.consumer_lag_groups.split(",")))
        return list(
            dict.fromkeys([self.processor_group, self.sink_group, self.store_group, self.notify_group])
        )
