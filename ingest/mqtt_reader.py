"""The bridge's MQTT reader: paho's client, reading its socket in bulk and cutting PUBLISHes itself.

paho reads one packet per ``loop_read`` with three ``recv`` calls (the command byte, each byte of
the remaining length, the body), wraps each PUBLISH in an ``MQTTMessage`` with an MQTT 5
``Properties`` object, then matches it against its per-filter callbacks. Profiled at the bridge's
load, that reading path was about 45% of the process's CPU, twice the work of translating the
payloads. :class:`BulkReadClient` replaces only the read loop: it reads up to 64 KiB at a time,
cuts whole packets out of it, hands each QoS 0/1 PUBLISH to ``on_publish(topic, payload, mid,
qos)``, and passes every other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, a QoS 2 PUBLISH)
to paho's own handler. paho still owns the protocol: connect, the session, subscriptions,
keepalive and reconnects. :meth:`BulkReadClient.ack_many` queues many PUBACKs as one write.

The reader keeps to a window of its own: it hands on a PUBLISH only while ``room()`` allows one
more, and otherwise keeps the packets it has read (``holding``) until the caller reads again. The
broker's receive maximum cannot be relied on for that (Mosquitto 2.0 exceeds it once acks flow).
While it holds, a PINGRESP may wait behind the held PUBLISHes: the keepalive then still sends
PINGREQs but does not count the unread answer as a dead connection.

It relies on internals of paho-mqtt 2.x (pinned below 3 in pyproject.toml): ``_sock_recv``,
``_in_packet`` with ``_packet_handle``, ``_loop_rc_handle`` and ``_packet_queue``. The bridge's
tests cover it against a real Mosquitto in MQTT 5 and 3.1.1.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

from thermoflow.mqtt import MalformedPacketError, read_remaining_length

#: ``(topic, payload, packet id, QoS)`` of one received PUBLISH; the packet id is 0 for QoS 0.
PublishHandler = Callable[[str, bytes, int, int], None]

_CHUNK: Final = 65_536
_PUBLISH: Final = 0x30
_PUBACK: Final = 0x40
_QOS2: Final = 0x04
_OK: Final = MQTTErrorCode.MQTT_ERR_SUCCESS


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


def _unbounded() -> int:
    return 1 << 30


class BulkReadClient(paho.Client):
    """A paho ``Client`` whose ``loop_read`` reads whole chunks and sends PUBLISHes to ``on_publish``.

    ``room()`` says how many more PUBLISHes may be handed on now; it is asked once per read (only
    ``on_publish`` adds to what the caller holds, so the answer stays exact through the read).
    """

    def __init__(
        self, *args: Any, on_publish: PublishHandler, room: Callable[[], int] = _unbounded, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_publish_packet = on_publish
        self.room = room
        self.holding = False  # whole packets wait in _rest for room in the window
        self._rest = b""  # packets not handled yet: a partial one, or held ones

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle the packets held back, then read what the socket has (up to 64 KiB) and handle it.

        While the window is full nothing more is read from the socket: the broker's messages
        wait in the kernel's buffers and the broker, not in this process.
        """
        sock = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if self.holding:
            rc = self._handle_packets(self._rest)
            if rc:
                return self._loop_rc_handle(rc)
            if self.holding or self._sock is None:
                return _OK
        data, lost = b"", False
        try:
            data = self._sock_recv(_CHUNK)
            lost = not data
            # TLS: records already decrypted wait in the SSL object, not the socket: no readable event.
            while not lost and isinstance(sock, ssl.SSLSocket) and sock.pending():
                data += self._sock_recv(sock.pending())
        except BlockingIOError:
            pass
        except OSError:
            lost = True
        if data:
            self._last_bytes_received = paho.time_func()
            try:
                rc = self._handle_packets(self._rest + data if self._rest else data)
            except MalformedPacketError:
                rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
            if rc:
                return self._loop_rc_handle(rc)
        return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST) if lost else _OK

    def _handle_packets(self, buf: bytes) -> MQTTErrorCode:
        end = len(buf)
        pos = 0
        mqtt5 = self._protocol == paho.MQTTv5
        on_publish = self.on_publish_packet
        room = self.room()
        self.holding = False
        while end - pos >= 2:
            header = buf[pos]
            length = read_remaining_length(buf, pos + 1, end)
            if length is None or length[1] + length[0] > end:
                break  # the rest of this packet comes with the next read
            start, stop = length[1], length[1] + length[0]
            if header & 0xF0 == _PUBLISH and not header & _QOS2:
                if room <= 0:
                    self.holding = True
                    break
                room -= 1
                topic, payload, mid = parse_publish(header, buf, start, stop, mqtt5=mqtt5)
                on_publish(topic.decode("utf-8", "replace"), payload, mid, (header >> 1) & 0x03)
            else:
                rc = self._paho_handle(header, buf[start:stop])
                if rc or self._sock is None:  # an error, or paho closed the connection (DISCONNECT)
                    self._rest = b""
                    return rc
            pos = stop
        self._rest = buf[pos:]
        return _OK

    def _paho_handle(self, header: int, body: bytes) -> MQTTErrorCode:
        """One packet through paho's handler, set up as paho's own reader would leave it."""
        self._in_packet = {
            "command": header,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc: MQTTErrorCode = self._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }
        return rc

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK these QoS 1 packet ids in one write (paho's ``ack`` queues and writes each apart).

        Each is the 4-byte PUBACK that paho's ``ack`` sends (MQTT 5 allows leaving out a success
        reason code), queued together as one of paho's outgoing packets.
        """
        if mids:
            acks = b"".join(bytes((_PUBACK, 2, mid >> 8, mid & 0xFF)) for mid in mids)
            self._packet_queue(_PUBACK, acks, 0, 1)

    def loop_misc(self) -> MQTTErrorCode:
        """paho's keepalive; while the window is full, a PINGRESP may sit unread behind PUBLISHes."""
        if self.holding or self.room() <= 0:
            self._ping_t = 0.0  # so paho pings again instead of closing for the answer it cannot see
        return super().loop_misc()

    def _sock_close(self) -> None:
        self._rest = b""  # a new connection starts at a packet boundary
        self.holding = False
        super()._sock_close()
