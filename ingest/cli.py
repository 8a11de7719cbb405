"""The `thermoflow` sub-commands of the ingest component: `bridge` and `sink`."""

from __future__ import annotations

from typing import Annotated

import typer

from thermoflow.component import run_until_signal
from thermoflow.ingest.settings import IngestSettings
from thermoflow.logs import configure_logging
from thermoflow.settings import load_settings

MqttUrl = Annotated[str | None, typer.Option(help="MQTT broker, mqtt://host:port (THERMOFLOW_MQTT_URL)")]
KafkaBootstrap = Annotated[
    str | None, typer.Option(help="Kafka bootstrap servers (THERMOFLOW_KAFKA_BOOTSTRAP)")
]
DatabaseUrl = Annotated[str | None, typer.Option(help="PostgreSQL URL (THERMOFLOW_DATABASE_URL)")]
ReadingsTopic = Annotated[
    str | None, typer.Option(help="Kafka topic of readings [telemetry.readings] (THERMOFLOW_READINGS_TOPIC)")
]
LogLevel = Annotated[str | None, typer.Option(help="log level [INFO] (THERMOFLOW_LOG_LEVEL)")]


def bridge_command(
    mqtt_url: MqttUrl = None,
    topics: Annotated[
        str | None,
        typer.Option("--topics", help="MQTT topic filters, comma-separated [sensors/+/temperature]"),
    ] = None,
    topic_template: Annotated[
        str | None,
        typer.Option(help="where device_id and metric are in a topic [sensors/{device_id}/{metric}]"),
    ] = None,
    client_id: Annotated[
        str | None, typer.Option(help="fixed MQTT client id of the persistent session [thermoflow-bridge]")
    ] = None,
    mqtt_version: Annotated[str | None, typer.Option(help="MQTT protocol version: 5 or 3.1.1 [5]")] = None,
    share_group: Annotated[
        str | None, typer.Option(help="MQTT 5 shared-subscription group, so several bridges split the load")
    ] = None,
    receive_maximum: Annotated[
        int | None, typer.Option(help="QoS 1 messages unacked at the bridge at most [2000]")
    ] = None,
    max_payload_bytes: Annotated[
        int | None, typer.Option(help="larger payloads are dead-lettered [65536]")
    ] = None,
    kafka_bootstrap: KafkaBootstrap = None,
    readings_topic: ReadingsTopic = None,
    log_level: LogLevel = None,
) -> None:
    """Bridge MQTT to Kafka, at least once (runs until SIGTERM/SIGINT)."""
    from thermoflow.ingest.bridge import run_bridge

    settings = load_settings(
        IngestSettings, mqtt_url=mqtt_url, mqtt_topics=topics, topic_template=topic_template,
        mqtt_client_id=client_id, mqtt_version=mqtt_version, mqtt_share_group=share_group,
        mqtt_receive_maximum=receive_maximum, max_payload_bytes=max_payload_bytes,
        kafka_bootstrap=kafka_bootstrap, readings_topic=readings_topic, log_level=log_level,
    )  # fmt: skip
    configure_logging(level=settings.log_level, component="bridge")
    run_until_signal(lambda stop: run_bridge(settings, stop=stop), grace=settings.shutdown_grace)


def sink_command(
    group: Annotated[
        str | None, typer.Option(help="consumer group [thermoflow-sink] (THERMOFLOW_SINK_GROUP)")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="readings per database transaction at most [20000]")
    ] = None,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    readings_topic: ReadingsTopic = None,
    log_level: LogLevel = None,
) -> None:
    """Write readings from Kafka into the database, idempotently (runs until SIGTERM/SIGINT)."""
    from thermoflow.ingest.sink import run_sink

    settings = load_settings(
        IngestSettings, sink_group=group, sink_batch=batch_size, database_url=database_url,
        kafka_bootstrap=kafka_bootstrap, readings_topic=readings_topic, log_level=log_level,
    )  # fmt: skip
    configure_logging(level=settings.log_level, component="sink")
    run_until_signal(lambda stop: run_sink(settings, stop=stop), grace=settings.shutdown_grace)


def register(app: typer.Typer) -> None:
    """Add this component's commands to the `thermoflow` app."""
    app.command("bridge")(bridge_command)
    app.command("sink")(sink_command)
