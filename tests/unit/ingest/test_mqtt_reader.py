"""The bridge's bulk MQTT reader: packets cut right wherever the socket splits the stream.

The reader runs on a socket pair (no broker): the test writes MQTT packets into one end in
arbitrary pieces and calls ``loop_read`` on the other, as the bridge does on a readable event.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, _ConnectionState

from thermoflow.ingest.mqtt_reader import BulkReadClient
from thermoflow.mqtt import MalformedPacketError, parse_publish, remaining_length, utf8_field

Message = tuple[str, bytes, int, int]


def publish_packet(
    topic: str, payload: bytes, *, qos: int, mid: int, mqtt5: bool, properties: bytes = b""
) -> bytes:
    body = utf8_field(topic) + (mid.to_bytes(2, "big") if qos else b"")
    if mqtt5:
        body += remaining_length(len(properties)) + properties
    body += payload
    return bytes((0x30 | qos << 1,)) + remaining_length(len(body)) + body


class Reader:
    """A BulkReadClient reading one end of a socket pair; what it handed on, in order."""

    def __init__(self, *, mqtt5: bool) -> None:
        self.received: list[Message] = []
        self.client = BulkReadClient(
            CallbackAPIVersion.VERSION2,
            protocol=paho.MQTTv5 if mqtt5 else paho.MQTTv311,
            on_publish=lambda *message: self.received.append(message),
        )
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.client._sock = self.ours

    def feed(self, data: bytes) -> MQTTErrorCode:
        self.theirs.sendall(data)
        rc = self.client.loop_read()
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self.client._sock is not None and readable(self.ours):
            rc = self.client.loop_read()
        return rc

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


def readable(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False


@pytest.fixture
def reader5() -> Iterator[Reader]:
    reader = Reader(mqtt5=True)
    yield reader
    reader.close()


messages = st.lists(
    st.tuples(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40),
        st.binary(max_size=400),  # past 127 bytes the remaining length takes two bytes
        st.sampled_from([0, 1]),
        st.integers(1, 65535),
        st.binary(max_size=20),  # MQTT 5 properties: skipped, whatever they hold
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(messages, st.booleans(), st.lists(st.integers(1, 200), min_size=1, max_size=20))
def test_every_publish_comes_out_whole_and_in_order_however_the_stream_is_split(
    sent: list[tuple[str, bytes, int, int, bytes]], mqtt5: bool, cuts: list[int]
) -> None:
    reader = Reader(mqtt5=mqtt5)
    try:
        stream = b"".join(
            publish_packet(topic, payload, qos=qos, mid=mid, mqtt5=mqtt5, properties=properties)
            for topic, payload, qos, mid, properties in sent
        )
        position, piece = 0, 0
        while position < len(stream):
            size = cuts[piece % len(cuts)]
            assert reader.feed(stream[position : position + size]) == MQTTErrorCode.MQTT_ERR_SUCCESS
            position += size
            piece += 1
        expected = [(topic, payload, mid if qos else 0, qos) for topic, payload, qos, mid, _ in sent]
        assert reader.received == expected
        assert reader.client._rest == b""
    finally:
        reader.close()


def test_other_packets_go_to_paho_between_publishes(reader5: Reader) -> None:
    reader5.client._ping_t = 123.0  # paho is waiting for a PINGRESP
    stream = (
        publish_packet("a/1", b"1", qos=1, mid=7, mqtt5=True)
        + bytes((0xD0, 0x00))  # PINGRESP
        + publish_packet("a/2", b"2", qos=0, mid=0, mqtt5=True)
    )
    assert reader5.feed(stream) == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert reader5.received == [("a/1", b"1", 7, 1), ("a/2", b"2", 0, 0)]
    assert reader5.client._ping_t == 0  # paho's handler saw the PINGRESP


def test_a_malformed_packet_drops_the_connection(reader5: Reader) -> None:
    disconnects: list[object] = []
    reader5.client.on_disconnect = lambda *args: disconnects.append(args[3])
    # A PUBLISH whose topic length runs past the packet's end.
    assert reader5.feed(bytes((0x30, 0x03, 0x00, 0x09, 0x61))) == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert reader5.client._sock is None and reader5.received == [] and len(disconnects) == 1


def test_a_closed_socket_is_a_lost_connection(reader5: Reader) -> None:
    reader5.theirs.close()
    assert reader5.client.loop_read() == MQTTErrorCode.MQTT_ERR_CONN_LOST
    assert reader5.client._sock is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00", "without a topic length"),
        (b"\x00\x01a\x00", "before its packet id"),
        (b"\x00\x01a\x00\x01", "before its properties"),
        (b"\x00\x01a\x00\x01\x05ab", "shorter than"),
    ],
)
def test_parse_publish_names_what_is_cut_off(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacketError, match=reason):
        parse_publish(0x32, body, 0, len(body), mqtt5=True)


def test_ack_many_writes_the_pubacks_paho_would_send_one_by_one(reader5: Reader) -> None:
    one_by_one = BulkReadClient(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, on_publish=print)
    one_by_one._sock = reader5.ours
    registered: list[object] = []
    for client in (one_by_one, reader5.client):  # as in the bridge: paho queues, writes when writable
        client.on_socket_register_write = lambda *_, c=client: registered.append(c)
    for mid in (1, 300, 65535):
        one_by_one._send_puback(mid)
    reader5.client.ack_many([1, 300, 65535])  # written at once, in one write
    reader5.client.ack_many([])
    assert not reader5.client._out_packet and reader5.client not in registered
    assert reader5.theirs.recv(100) == b"".join(packet["packet"] for packet in one_by_one._out_packet)


def test_ack_many_leaves_what_the_socket_does_not_take_to_the_write_loop(reader5: Reader) -> None:
    registered: list[object] = []
    reader5.client.on_socket_register_write = lambda *_: registered.append(True)
    reader5.ours.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:  # fill the socket's buffers: the broker is not reading
            reader5.ours.send(b"x" * 65536)
    reader5.client.ack_many([1, 2])
    assert registered and len(reader5.client._out_packet) == 1  # written once the socket is writable


def test_nothing_after_a_server_disconnect_is_carried_into_the_next_connection(reader5: Reader) -> None:
    stream = (
        publish_packet("a/1", b"1", qos=1, mid=1, mqtt5=True)
        + bytes((0xE0, 0x00))  # DISCONNECT from the server (MQTT 5)
        + publish_packet("a/2", b"2", qos=1, mid=2, mqtt5=True)[:5]  # the start of one more packet
    )
    reader5.feed(stream)
    assert reader5.received == [("a/1", b"1", 1, 1)]
    assert reader5.client._sock is None and reader5.client._rest == b""


class WindowedReader(Reader):
    """A reader whose caller holds what it was handed until ``release``, at most ``window`` at once."""

    def __init__(self, *, window: int) -> None:
        super().__init__(mqtt5=True)
        self.window = window
        self.held = 0
        self.peak = 0
        self.client.on_publish_packet = self.take
        self.client.room = lambda: self.window - self.held

    def take(self, *message: object) -> None:
        self.received.append(message)  # type: ignore[arg-type]
        self.held += 1
        self.peak = max(self.peak, self.held)

    def release(self, count: int) -> None:
        self.held -= count


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.lists(st.integers(1, 30), min_size=1, max_size=30))
def test_the_reader_never_hands_on_more_than_the_window_and_loses_nothing_it_held_back(
    window: int, releases: list[int]
) -> None:
    reader = WindowedReader(window=window)
    try:
        sent = [(f"a/{i}", str(i).encode(), i % 65_535 + 1, 1) for i in range(200)]
        reader.theirs.sendall(b"".join(publish_packet(t, p, qos=1, mid=m, mqtt5=True) for t, p, m, _ in sent))
        for count in [*releases, 200]:  # the caller acks some, then reads on
            while reader.client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS and not reader.client.holding:
                if not readable(reader.ours):
                    break
            assert reader.held <= window
            reader.release(min(count, reader.held))
        while len(reader.received) < len(sent):  # everything comes out once there is room
            reader.release(reader.held)
            assert reader.client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
        assert reader.received == sent
        assert reader.peak <= window
    finally:
        reader.close()


def test_a_held_back_reader_keeps_pinging_instead_of_dropping_the_connection(reader5: Reader) -> None:
    reader5.client.room = lambda: 0
    reader5.client._state = _ConnectionState.MQTT_CS_CONNECTED
    reader5.client._keepalive = 5
    assert (
        reader5.feed(publish_packet("a/1", b"1", qos=1, mid=1, mqtt5=True)) == MQTTErrorCode.MQTT_ERR_SUCCESS
    )
    assert reader5.client.holding and reader5.received == []
    reader5.client._ping_t = 1.0  # a PINGREQ went out long ago; its answer is behind the held PUBLISH
    reader5.client._last_msg_out = reader5.client._last_bytes_received = 0.0
    assert reader5.client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert reader5.client._sock is not None  # still connected
    assert reader5.theirs.recv(10) == bytes((0xC0, 0x00))  # and it pinged again
