"""MQTT helpers: a paho-mqtt 2.x client configured from the shared settings, and the one MQTT codec.

The codec is pure byte functions shared by the bridge's reader (:mod:`thermoflow.ingest.mqtt_reader`)
and the simulator's publisher (:mod:`thermoflow.simulator.packets`): the framing (the remaining
length, whole packets cut off a buffer), the length-prefixed strings, the PUBLISH body and the
PUBACK.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, Final, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from thermoflow.settings import ThermoflowSettings

MqttVersion = Literal["5", "3.1.1"]

_PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}

PUBACK: Final = 0x40
_U16: Final = struct.Struct(">H")


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


def remaining_length(n: int) -> bytes:
    """The variable-length "remaining length" field (the encoding :func:`read_remaining_length` reads).

    >>> remaining_length(127), remaining_length(128), remaining_length(16384)
    (b'\\x7f', b'\\x80\\x01', b'\\x80\\x80\\x01')
    """
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def utf8_field(text: str | bytes) -> bytes:
    """A string (a topic, a client id ...) with its 2-byte length prefix."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > 0xFFFF:
        raise ValueError(f"MQTT string longer than 65535 bytes: {len(raw)}")
    return _U16.pack(len(raw)) + raw


def split_packets(buffer: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Split complete packets off the front of ``buffer``: ``([(first byte, body)], bytes used)``.

    An incomplete packet at the end stays for the next call.

    >>> split_packets(bytearray(b"@\\x02\\x00\\x07@\\x02\\x00"))
    ([(64, b'\\x00\\x07')], 4)

    Raises:
        MalformedPacketError: a remaining length longer than 4 bytes.
    """
    packets: list[tuple[int, bytes]] = []
    pos = 0
    size = len(buffer)
    while size - pos >= 2:
        length = read_remaining_length(buffer, pos + 1, size)
        if length is None or length[1] + length[0] > size:
            break
        start, stop = length[1], length[1] + length[0]
        packets.append((buffer[pos], bytes(buffer[start:stop])))
        pos = stop
    return packets, pos


def parse_publish(header: int, buf: bytes, start: int, end: int, *, mqtt5: bool) -> tuple[bytes, bytes, int]:
    """(topic, payload, packet id) of the PUBLISH whose body is ``buf[start:end]``.

    >>> body = b"\\x00\\x03a/b" + b"\\x00\\x07" + b"\\x00" + b"21.5"
    >>> parse_publish(0x32, body, 0, len(body), mqtt5=True)
    (b'a/b', b'21.5', 7)
    """
    if end - start < 2:
        raise MalformedPacketError("PUBLISH without a topic length")
    pos = start + 2 + (buf[start] << 8 | buf[start + 1])
    topic = buf[start + 2 : pos]
    mid = 0
    if header & 0x06:
        if pos + 2 > end:
            raise MalformedPacketError("PUBLISH cut off before its packet id")
        mid = buf[pos] << 8 | buf[pos + 1]
        pos += 2
    if mqtt5:
        properties = read_remaining_length(buf, pos, end)
        if properties is None:
            raise MalformedPacketError("PUBLISH cut off before its properties")
        pos = properties[1] + properties[0]
    if pos > end:
        raise MalformedPacketError("PUBLISH shorter than its topic and properties")
    return topic, buf[pos:end], mid


def pubacks(mids: Iterable[int]) -> bytes:
    """The PUBACKs of these packet ids, back to back (MQTT 5 allows leaving out a success reason code)."""
    return b"".join(bytes((PUBACK, 2, mid >> 8, mid & 0xFF)) for mid in mids)


def puback_id(body: bytes) -> int:
    """The packet id a PUBACK acknowledges.

    Raises:
        MalformedPacketError: a body too short for a packet id.
    """
    if len(body) < 2:
        raise MalformedPacketError(f"PUBACK with {len(body)}-byte body")
    return int(_U16.unpack_from(body)[0])
