"""thermoflow: an IoT temperature-telemetry pipeline, MQTT -> Kafka -> functions -> alerts."""

__version__ = "0.1.0"
