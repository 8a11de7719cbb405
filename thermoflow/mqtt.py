"""MQTT helpers: a paho-mqtt 2.x client configured from the shared settings, and packet framing."""

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


class MalformedPacketError(ValueError):
    """A packet that breaks the MQTT framing rules; the connection is dropped."""


def read_remaining_length(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """The variable byte integer (a remaining length) at ``pos``: (value, position after it).

    None when ``end`` cuts it off. The bridge's reader and the simulator's client both frame with it.

    >>> read_remaining_length(bytes([0x7F]), 0, 1), read_remaining_length(bytes([0x80, 0x01]), 0, 2)
    ((127, 1), (128, 2))
    >>> read_remaining_length(bytes([0x80]), 0, 1) is None
    True
    """
    value = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MalformedPacketError("variable byte integer longer than 4 bytes")
    return None
