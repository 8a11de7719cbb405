from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from thermoflow.simulator import packets


def _decode_length(encoded: bytes) -> int:
    value, multiplier = 0, 1
    for byte in encoded:
        value += (byte & 0x7F) * multiplier
        multiplier *= 128
    return value


@given(st.integers(min_value=0, max_value=268_435_455))
def test_remaining_length_round_trips_and_uses_the_fewest_bytes(n: int) -> None:
    encoded = packets.remaining_length(n)
    assert _decode_length(encoded) == n
    assert len(encoded) == 1 + (n >= 128) + (n >= 16384) + (n >= 2_097_152)
    assert all(b & 0x80 for b in encoded[:-1]) and not encoded[-1] & 0x80


@given(
    topic=st.binary(min_size=1, max_size=300),
    payload=st.binary(max_size=20_000),
    packet_id=st.integers(min_value=1, max_value=65535),
    dup=st.booleans(),
)
def test_publish_packets_parse_back_to_topic_id_and_payload(
    topic: bytes, payload: bytes, packet_id: int, dup: bool
) -> None:
    field = packets.topic_field(topic)
    stream = bytearray(
        packets.publish_qos0(field, payload) + packets.publish_qos1(field, packet_id, payload, dup=dup)
    )
    found, used = packets.parse_packets(stream)
    assert used == len(stream)
    (first0, body0), (first1, body1) = found
    assert first0 == 0x30 and body0 == field + payload
    assert first1 == (0x3A if dup else 0x32)
    assert body1 == field + struct.pack(">H", packet_id) + payload


def test_parse_leaves_an_incomplete_packet_for_later() -> None:
    whole = packets.publish_qos0(packets.topic_field(b"a/b"), b"x" * 200)
    buffer = bytearray(whole + whole[:-5])
    found, used = packets.parse_packets(buffer)
    assert len(found) == 1 and used == len(whole)
    del buffer[:used]
    buffer += whole[-5:]
    found, used = packets.parse_packets(buffer)
    assert len(found) == 1 and used == len(whole)


def test_connect_packet_carries_client_id_keepalive_and_credentials() -> None:
    packet = packets.connect_packet(client_id="sim-1", keepalive=30, username="u", password="p")
    found, _ = packets.parse_packets(bytearray(packet))
    first, body = found[0]
    assert first == packets.CONNECT
    assert body[:6] == b"\x00\x04MQTT" and body[6] == 4
    assert body[7] == 0x80 | 0x40 | 0x02  # username, password, clean session
    assert struct.unpack(">H", body[8:10])[0] == 30
    assert body[10:] == b"\x00\x05sim-1\x00\x01u\x00\x01p"
