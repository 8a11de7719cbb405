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

:class:`PahoOnAsyncio` runs the client on an asyncio loop through paho's external-loop hooks
(``on_socket_open`` / ``on_socket_register_write`` ...): the loop calls ``loop_read`` when the
socket is readable and ``loop_write`` when paho has something to write, so paho is only ever
used from the loop's thread.

This module is the one place that touches paho's private API; nothing else in thermoflow may.
It relies on these internals of paho-mqtt 2.2 (pinned ``>=2.2,<2.3`` in pyproject.toml, and
:func:`check_paho_version` refuses to start on another version):

- ``_sock_recv`` and ``_sock`` (the read), ``_sock_close`` (a close without a DISCONNECT round);
- ``_in_packet`` and ``_packet_handle`` (paho's own handler for the packets the reader does not
  cut itself), ``_loop_rc_handle`` (a read's error into a disconnect);
- ``_out_packet`` and ``loop_write`` (the PUBACKs queued and written as one write);
- ``_protocol``, ``_last_bytes_received`` and ``_ping_t`` (the keepalive's bookkeeping).

The bridge's tests cover it against a real Mosquitto in MQTT 5 and 3.1.1, and
tests/unit/ingest/test_mqtt_reader.py against paho's own client without a broker.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

from thermoflow.mqtt import PUBACK, MalformedPacketError, parse_publish, read_remaining_length
from thermoflow.settings import ConfigError

#: ``(topic, payload, packet id, QoS)`` of one received PUBLISH; the packet id is 0 for QoS 0.
PublishHandler = Callable[[str, bytes, int, int], None]

_CHUNK: Final = 65_536
_PUBLISH: Final = 0x30
_QOS2: Final = 0x04
_OK: Final = MQTTErrorCode.MQTT_ERR_SUCCESS
#: A PUBACK as one big-endian 32-bit word: the type, remaining length 2, then the packet id
#: (thermoflow.mqtt.pubacks's bytes, packed in one call instead of one bytes object per id).
_PUBACK_HEAD: Final = PUBACK << 24 | 2 << 16


@functools.lru_cache(maxsize=64)
def _pubacks_of(count: int) -> struct.Struct:
    return struct.Struct(f">{count}I")


#: The paho-mqtt versions this adapter was written for and tested with: at least, below
#: (pyproject.toml pins the same; requirements.lock holds 2.2.0).
PAHO_VERSIONS: Final = ((2, 2), (2, 3))


class IncompatiblePaho(ConfigError):
    """paho-mqtt is not a version :mod:`thermoflow.ingest.mqtt_reader` was written for."""


def check_paho_version(installed: Callable[[str], str] | None = None) -> None:
    """Refuse to start on a paho-mqtt this adapter was not written for.

    Args:
        installed: the installed version of a distribution (``importlib.metadata.version``).

    Raises:
        IncompatiblePaho: naming the version found, the ones expected and what to run before
            widening the pin.
    """
    lookup = installed or version
    try:
        found: str | None = lookup("paho-mqtt")
    except PackageNotFoundError:
        found = None
    if found is not None and PAHO_VERSIONS[0] <= _major_minor(found) < PAHO_VERSIONS[1]:
        return
    low, high = (".".join(map(str, bound)) for bound in PAHO_VERSIONS)
    raise IncompatiblePaho(
        f"ingest/mqtt_reader.py was written for paho-mqtt>={low},<{high}, but found paho-mqtt"
        f" {found or 'not installed'}. Install the tested set with `pip install -r requirements.lock`."
        " Before widening the pin, check that paho's Client still has the internals listed in"
        " ingest/mqtt_reader.py's docstring (_sock_recv, _in_packet, _packet_handle, _loop_rc_handle,"
        " _out_packet, _sock_close, _ping_t ...) with the same meaning, then run `pytest"
        " tests/unit/ingest tests/integration/ingest tests/e2e` and `python bench/bench_bridge.py`,"
        " and update PAHO_VERSIONS in ingest/mqtt_reader.py with the pin in pyproject.toml (`make lock`)."
    )


def _major_minor(text: str) -> tuple[int, ...]:
    """``(2, 2)`` for ``"2.2.0"``; a part that is not a number counts as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in text.split(".")[:2])


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
        self.drained = True  # the last read took all the socket had (less than a chunk)
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
        chunks: list[bytes] = []
        size, lost, tls = 0, False, isinstance(sock, ssl.SSLSocket)
        self.drained = False
        try:
            # Plain TCP: one recv takes what the kernel holds, up to a chunk. TLS: a recv returns
            # one TLS record (often one packet), so read records until none is left or a chunk is full.
            while size < _CHUNK:
                piece = self._sock_recv(_CHUNK - size)
                if not piece:
                    lost = True
                    break
                chunks.append(piece)
                size += len(piece)
                if not tls:
                    self.drained = size < _CHUNK
                    break
            # TLS: records already decrypted wait in the SSL object, not the socket: no readable event.
            while not lost and isinstance(sock, ssl.SSLSocket) and sock.pending():
                chunks.append(self._sock_recv(sock.pending()))
        except BlockingIOError:
            self.drained = True
        except OSError:
            lost = True
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
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
            size = buf[pos + 1]
            if size < 0x80:  # a remaining length of one byte: most readings
                start, stop = pos + 2, pos + 2 + size
            else:
                length = read_remaining_length(buf, pos + 1, end)
                if length is None:
                    break  # the rest of this packet comes with the next read
                start, stop = length[1], length[1] + length[0]
            if stop > end:
                break
            if header & 0xF0 == _PUBLISH and not header & _QOS2:
                if room <= 0:
                    self.holding = True
                    break
                room -= 1
                if header & 0x06 and stop - start >= 2:  # QoS 1: parse_publish, inlined
                    cut = start + 2 + (buf[start] << 8 | buf[start + 1])  # the topic's end
                    body = cut + 2 + mqtt5  # after the packet id, and MQTT 5's properties length
                    if body <= stop and not (mqtt5 and buf[cut + 2]):  # no properties (nearly all)
                        on_publish(buf[start + 2 : cut].decode("utf-8", "replace"), buf[body:stop],
                                   buf[cut] << 8 | buf[cut + 1], 1)  # fmt: skip
                        pos = stop
                        continue
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
        reason code), queued together as one of paho's outgoing packets and written at once, on
        the loop's thread: paho's ``_packet_queue`` would instead register the socket for
        writing and unregister it after the write, two more system calls per flush. What the
        socket does not take now is written by paho's write loop when the socket is writable.
        """
        if mids:
            packet = _pubacks_of(len(mids)).pack(*[_PUBACK_HEAD | mid for mid in mids])
            self._out_packet.append(
                {"command": PUBACK, "mid": 0, "qos": 1, "pos": 0, "to_process": len(packet),
                 "packet": packet, "info": None}
            )  # fmt: skip
            self.loop_write()

    def loop_misc(self) -> MQTTErrorCode:
        """paho's keepalive; while the window is full, a PINGRESP may sit unread behind PUBLISHes."""
        if self.holding or self.room() <= 0:
            self._ping_t = 0.0  # so paho pings again instead of closing for the answer it cannot see
        return super().loop_misc()

    def _sock_close(self) -> None:
        self._rest = b""  # a new connection starts at a packet boundary
        self.holding = False
        super()._sock_close()

    def close_socket(self) -> None:
        """Close the connection's socket now: paho has no public close without a DISCONNECT round."""
        self._sock_close()


class PahoOnAsyncio:
    """paho's external-loop hooks on the running asyncio loop, and the reader's pause and resume.

    ``may_read()`` says whether to read at all (not while stopping, nor with a full window).
    Reading pauses when the window is full and resumes once acks make room; packets the client
    already holds are handled on resume, as no readable event will come for them.

    ``rest()`` is asked after a read that took all the socket had: True rests the reader (the
    caller is gathering a batch) until :meth:`read_now`, which reads what came meanwhile in one
    go. At a low rate a readable event carries a message or two, and each wakeup of the loop
    costs more CPU than the messages: resting, the reader wakes about twice per batch instead.
    """

    def __init__(self, *, may_read: Callable[[], bool], rest: Callable[[], bool] = lambda: False) -> None:
        self.may_read = may_read
        self.rest = rest
        self.client: BulkReadClient | None = None
        self.sock: socket.socket | None = None
        self.reading = False
        self.resting = False  # paused by rest() until read_now()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def attach(self, client: BulkReadClient) -> None:
        """Run ``client`` on the running loop (call from the loop's thread)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.client = client
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    def close(self) -> None:
        """Stop watching the socket and close it, without a DISCONNECT; the client is done."""
        if self.sock is not None:
            self._socket_closed(self.sock)
        if self.client is not None:
            self.client.close_socket()
            self.client = None

    def pause(self) -> None:
        if self.reading and self.sock is not None and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())  # the fd: see resume
        self.reading = False

    def resume(self) -> None:
        """Read again, if ``may_read()`` and not resting (a no-op while unconnected)."""
        loop, sock = self._loop, self.sock
        if self.reading or self.resting or sock is None or loop is None or not self.may_read():
            return
        # The fd, not the socket: the selector looks it up first, and the KeyError of a socket not
        # registered formats the socket's repr (two system calls, its addresses) on every resume.
        loop.add_reader(sock.fileno(), self._readable)
        self.reading = True
        if self.client is not None and self.client.holding:
            loop.call_soon(self._readable)  # packets already read wait: no readable event will come

    def read_now(self, *, max_chunks: int = 64, rest: Callable[[], bool] = lambda: False) -> None:
        """Read what the socket holds now (while ``may_read()``); then read on events, or, if
        ``rest()`` says so once the socket is drained, rest until the next ``read_now``."""
        self.resting = False
        client = self.client
        for _ in range(max_chunks):
            if client is None or self.sock is None or not self.may_read():
                break
            client.loop_read()
            if client.holding or client.drained:
                break
        if client is not None and client.holding:
            self.pause()
        elif client is not None and self.sock is not None and client.drained and rest():
            self.pause()
            self.resting = True
        else:
            self.resume()

    def _readable(self) -> None:
        """One chunk of what the socket holds (up to 64 KiB); the loop calls again while more is there."""
        client = self.client
        if client is None or not self.reading:
            return
        client.loop_read()
        if client.holding:  # the window is full: read again once acks make room
            self.pause()
        elif client.drained and self.rest():
            self.pause()
            self.resting = True

    def _in_loop(self, callback: Callable[[socket.socket], None], sock: socket.socket) -> None:
        """Run now when on the loop's thread (paho closes the socket right after), else hand over."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            callback(sock)
        else:
            self._loop.call_soon_threadsafe(callback, sock)

    def _on_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._socket_opened, sock)

    def _socket_opened(self, sock: socket.socket) -> None:
        self.sock = sock
        self.resume()

    def _on_socket_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._socket_closed, sock)

    def _socket_closed(self, sock: socket.socket) -> None:
        assert self._loop is not None
        if sock.fileno() != -1:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if self.sock is sock:
            self.sock = None
            self.reading = False
            self.resting = False  # a new connection reads at once

    def _on_register_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._register_write, sock)

    def _register_write(self, sock: socket.socket) -> None:
        assert self._loop is not None and self.client is not None
        if sock is self.sock:
            self._loop.add_writer(sock, self.client.loop_write)

    def _on_unregister_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._loop is not None and sock is not None:
            self._loop.remove_writer(sock)
