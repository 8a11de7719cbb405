"""MQTT connection helpers on paho-mqtt 2.x: a client configured from the shared settings."""

from __future__ import annotations

from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from thermoflow.settings import ThermoflowSettings

MqttVersion = Literal["5", "3.1.1"]

_PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}


def client(
    settings: ThermoflowSettings,
    *,
    client_id: str = "",
    version: MqttVersion = "5",
    clean: bool = True,
    cls: type[paho.Client] = paho.Client,
    **kwargs: Any,
) -> paho.Client:
    """A paho client (callback API v2) with credentials and TLS from the settings; not yet connected.

    ``clean=False`` asks for a persistent session (MQTT 3.1.1 ``clean_session=False``; for MQTT 5
    pass ``clean_start=False`` and a session expiry to ``connect``). ``cls`` may be a subclass
    of paho's ``Client``; ``kwargs`` go to its constructor.
    """
    protocol = _PROTOCOLS[version]
    options: dict[str, Any] = {"client_id": client_id, "protocol": protocol, **kwargs}
    if protocol == paho.MQTTv311:
        options["clean_session"] = clean
    mqtt = cls(CallbackAPIVersion.VERSION2, **options)
    credentials = settings.mqtt_credentials
    if credentials:
        mqtt.username_pw_set(*credentials)
    context = settings.mqtt_ssl_context()
    if context is not None:
        mqtt.tls_set_context(context)
    return mqtt
