"""Settings: flags beat the environment, which beats the defaults; secrets never print."""

from __future__ import annotations

import pytest

from thermoflow.settings import ConfigError, ThermoflowSettings, load_settings, redact_url


def test_defaults_point_at_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("THERMOFLOW_MQTT_URL", "THERMOFLOW_KAFKA_BOOTSTRAP", "THERMOFLOW_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(ThermoflowSettings)
    assert settings.mqtt_url == "mqtt://127.0.0.1:1883"
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.database_dsn == "postgresql://thermoflow@127.0.0.1:5432/thermoflow"


def test_flags_beat_environment_beats_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THERMOFLOW_KAFKA_BOOTSTRAP", "kafka-env:9092")
    monkeypatch.setenv("THERMOFLOW_MQTT_URL", "mqtt://broker-env:1883")
    settings = load_settings(ThermoflowSettings, kafka_bootstrap="kafka-flag:9092", mqtt_url=None)
    assert settings.kafka_bootstrap == "kafka-flag:9092"
    assert settings.mqtt_url == "mqtt://broker-env:1883"  # None means "flag not given"


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THERMOFLOW_DATABASE_URL", "postgresql://app:hunter2@db:5432/t")
    monkeypatch.setenv("THERMOFLOW_MQTT_PASSWORD", "hunter2")
    monkeypatch.setenv("THERMOFLOW_KAFKA_SASL_PASSWORD", "hunter2")
    settings = load_settings(ThermoflowSettings)
    for text in (
        str(settings),
        repr(settings),
        settings.model_dump_json(),
        settings.database_url_redacted,
    ):
        assert "hunter2" not in text
    assert settings.database_url_redacted == "postgresql://app:***@db:5432/t"
    assert settings.database_dsn.endswith("hunter2@db:5432/t")


def test_bad_values_are_named_with_their_flag_and_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            ThermoflowSettings,
            mqtt_url="http://broker",
            kafka_bootstrap="nohostport",
            database_url="mysql://x",
        )
    message = str(info.value)
    assert "mqtt_url (--mqtt-url or THERMOFLOW_MQTT_URL)" in message
    assert "kafka_bootstrap" in message and "'nohostport'" in message
    assert "database_url" in message and "postgresql" in message


def test_sasl_needs_its_credentials() -> None:
    with pytest.raises(ConfigError, match="kafka_sasl_mechanism"):
        load_settings(ThermoflowSettings, kafka_security_protocol="SASL_SSL")


def test_sasl_options_reach_the_kafka_client() -> None:
    settings = load_settings(
        ThermoflowSettings,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="bridge",
        kafka_sasl_password="pw",
    )
    options = settings.kafka_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("bridge", "pw")


def test_mqtt_credentials_and_tls_from_url() -> None:
    settings = load_settings(ThermoflowSettings, mqtt_url="mqtts://dev:pw@broker.example:8884")
    assert settings.mqtt_tls and settings.mqtt_port == 8884 and settings.mqtt_host == "broker.example"
    assert settings.mqtt_credentials == ("dev", "pw")
    explicit = load_settings(ThermoflowSettings, mqtt_url="mqtt://b", mqtt_username="u", mqtt_password="p")
    assert explicit.mqtt_credentials == ("u", "p") and explicit.mqtt_port == 1883


def test_schema_name_is_an_identifier() -> None:
    with pytest.raises(ConfigError, match="database_schema"):
        load_settings(ThermoflowSettings, database_schema="x; DROP TABLE readings")


def test_redact_url_without_password_is_unchanged() -> None:
    assert redact_url("postgresql://app@db/t") == "postgresql://app@db/t"
