"""The few MQTT 3.1.1 packets a publisher needs, as pure byte functions (no sockets).

The framing, strings and PUBACK come from the one codec, :mod:`thermoflow.mqtt` (shared with the
bridge's reader); this module adds the publisher's CONNECT and fast PUBLISH encoders.

The simulator speaks MQTT itself over asyncio streams instead of running thousands of paho
clients: a publish is one ``bytes`` concatenation, a whole batch for one connection is one
``write``, and a buffer full of PUBACKs is parsed in bulk. See :mod:`thermoflow.simulator.connection`.

>>> publish_qos0(topic_field(b"a/b"), b"hi")
b'0\\x07\\x00\\x03a/bhi'
>>> parse_packets(bytearray(b"@\\x02\\x00\\x07@\\x02\\x00"))
([(64, b'\\x00\\x07')], 4)
"""

from __future__ import annotations

import struct
from typing import Final

from thermoflow import mqtt
from thermoflow.mqtt import MalformedPacketError
from thermoflow.mqtt import remaining_length as remaining_length  # the publisher's callers use them here
from thermoflow.mqtt import utf8_field as utf8_field

CONNECT: Final = 0x10
CONNACK: Final = 0x20
PUBLISH: Final = 0x30
PUBACK: Final = mqtt.PUBACK
PINGREQ: Final = 0xC0
PINGRESP: Final = 0xD0
DISCONNECT: Final = 0xE0

PINGREQ_PACKET: Final = b"\xc0\x00"
DISCONNECT_PACKET: Final = b"\xe0\x00"
DUP_FLAG: Final = 0x08

_U16 = struct.Struct(">H")

#: CONNACK return codes of MQTT 3.1.1, for error messages.
CONNACK_CODES: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class ProtocolError(Exception):
    """The broker sent something a 3.1.1 publisher cannot make sense of."""


# Precomputed for the hot path: most packets are shorter than 16 KiB.
_LENGTHS: Final = tuple(remaining_length(n) for n in range(16384))
#: The remaining-length fields of lengths below 16384, by length (the publisher's inline PUBLISH).
PUBLISH_LENGTHS: Final = _LENGTHS
#: A packet id's two bytes.
pack_packet_id: Final = _U16.pack


def topic_field(topic: bytes) -> bytes:
    """A topic name with its length prefix: computed once per device, reused for every publish."""
    return utf8_field(topic)


def connect_packet(
    *,
    client_id: str,
    keepalive: int,
    clean_session: bool = True,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """CONNECT for MQTT 3.1.1."""
    flags = 0x02 if clean_session else 0
    payload = utf8_field(client_id)
    if username is not None:
        flags |= 0x80
        payload += utf8_field(username)
        if password is not None:
            flags |= 0x40
            payload += utf8_field(password)
    variable = utf8_field("MQTT") + bytes((4, flags)) + _U16.pack(keepalive)
    body = variable + payload
    return bytes((CONNECT,)) + remaining_length(len(body)) + body


def publish_qos0(topic: bytes, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH; ``topic`` is a :func:`topic_field` (length-prefixed)."""
    n = len(topic) + len(payload)
    return b"0" + (_LENGTHS[n] if n < 16384 else remaining_length(n)) + topic + payload


def publish_qos1(topic: bytes, packet_id: int, payload: bytes, *, dup: bool = False) -> bytes:
    """A QoS 1 PUBLISH with its packet id; ``dup`` marks a redelivery after a reconnect."""
    n = len(topic) + 2 + len(payload)
    first = b":" if dup else b"2"  # 0x32 = PUBLISH|QoS1, 0x3a = with DUP
    return (
        first + (_LENGTHS[n] if n < 16384 else remaining_length(n)) + topic + _U16.pack(packet_id) + payload
    )


def parse_packets(buffer: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Split complete packets off the front of ``buffer``: ``([(first byte, body)], bytes used)``.

    An incomplete packet at the end stays for the next call.
    """
    try:
        return mqtt.split_packets(buffer)
    except MalformedPacketError as exc:
        raise ProtocolError(f"malformed remaining length: {exc}") from None


def puback_id(body: bytes) -> int:
    """The packet id a PUBACK acknowledges."""
    try:
        return mqtt.puback_id(body)
    except MalformedPacketError as exc:
        raise ProtocolError(str(exc)) from None
