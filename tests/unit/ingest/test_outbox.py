"""The bridge's outbox and resting reader: a batch grows with the load within the linger.

No services: the outbox on the test's event loop, the reader on a socket pair (as in
test_mqtt_reader.py).
"""

from __future__ import annotations

import asyncio
import socket
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from thermoflow.ingest.acks import Held
from thermoflow.ingest.delivery import Outbox
from thermoflow.ingest.mqtt_reader import BulkReadClient, PahoOnAsyncio
from thermoflow.ingest.records import OutRecord

from .test_mqtt_reader import publish_packet

RECORD = OutRecord("readings", b"f-1", b"{}", [])


def message(mid: int) -> Held:
    return Held(mid, 1, time.monotonic(), records=1)


async def flushed_after(outbox: Outbox, timeout: float = 5.0) -> float:
    started = time.monotonic()
    await asyncio.wait_for(outbox.due(), timeout)
    return time.monotonic() - started


async def test_a_slow_trickle_waits_for_the_linger_then_goes_in_one_flush() -> None:
    outbox = Outbox(batch=100, linger=0.2)
    waiting = asyncio.ensure_future(outbox.due())
    outbox.add([RECORD], message(1))
    await asyncio.sleep(0.05)
    outbox.add([RECORD], message(2))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # two records: gather more until the linger ends
    await asyncio.wait_for(waiting, 1.0)
    assert [owner.mid for _, owner in outbox.take()] == [1, 2] and len(outbox) == 0


async def test_a_full_batch_goes_at_once_without_waiting_for_the_linger() -> None:
    outbox = Outbox(batch=3, linger=60.0)
    waiting = asyncio.ensure_future(outbox.due())
    for mid in range(3):
        outbox.add([RECORD], message(mid))
    await asyncio.wait_for(waiting, 1.0)
    assert len(outbox.take()) == 3


async def test_hurry_flushes_what_is_gathered_and_an_empty_outbox_waits() -> None:
    outbox = Outbox(batch=100, linger=60.0)
    outbox.hurry()  # nothing gathered: nothing to flush
    waiting = asyncio.ensure_future(outbox.due())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    outbox.add([RECORD], message(1))
    outbox.hurry()  # e.g. the window is full, or the bridge stops
    await asyncio.wait_for(waiting, 1.0)
    outbox.take()
    outbox.add([RECORD], message(2))  # after a take, the next batch lingers again
    waiting = asyncio.ensure_future(outbox.due())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    waiting.cancel()


async def test_the_linger_counts_from_the_first_message_received() -> None:
    outbox = Outbox(batch=100, linger=0.3)
    early = Held(1, 1, time.monotonic() - 0.25, records=1)  # read 0.25 s ago
    outbox.add([RECORD], early)
    assert await flushed_after(outbox) < 0.2


def _client_on_a_socketpair() -> tuple[BulkReadClient, list[int], socket.socket, socket.socket]:
    """A bulk-reading paho client on one end of a socket pair, and the mids of what it received."""
    received: list[int] = []
    client = BulkReadClient(
        CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, on_publish=lambda *m: received.append(m[2])
    )
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    return client, received, ours, theirs


async def test_the_reader_rests_until_read_now_then_reads_everything_that_came() -> None:
    client, received, ours, theirs = _client_on_a_socketpair()
    gathering = [False]
    io = PahoOnAsyncio(may_read=lambda: True, rest=lambda: gathering[0])
    io.attach(client)
    io.sock = ours
    try:
        io.resume()
        gathering[0] = True  # the bridge has records waiting for their flush
        theirs.sendall(publish_packet("a/1", b"1", qos=1, mid=1, mqtt5=True))
        await asyncio.sleep(0.05)
        assert received == [1] and io.resting and not io.reading
        theirs.sendall(b"".join(publish_packet("a/1", b"1", qos=1, mid=m, mqtt5=True) for m in (2, 3, 4)))
        await asyncio.sleep(0.05)
        assert received == [1]  # resting: the socket keeps them until the flush
        io.read_now()
        assert received == [1, 2, 3, 4] and io.reading and not io.resting
        gathering[0] = False
        theirs.sendall(publish_packet("a/1", b"1", qos=1, mid=5, mqtt5=True))
        await asyncio.sleep(0.05)
        assert received == [1, 2, 3, 4, 5] and io.reading  # nothing gathered: reads on events
    finally:
        io.pause()
        ours.close()
        theirs.close()


def test_the_linger_is_half_the_latency_budget_unless_set() -> None:
    from thermoflow.ingest.settings import IngestSettings

    assert IngestSettings().linger == 0.05
    assert IngestSettings(latency_budget=0.4).linger == 0.2
    assert IngestSettings(latency_budget=0.4, bridge_linger=0).linger == 0


async def test_under_a_steady_load_the_next_flush_is_due_a_linger_after_the_last_one() -> None:
    outbox = Outbox(batch=100, linger=60.0)
    outbox.expect(time.monotonic() - 61.0)  # the last flush went a linger ago; the reader rests since
    await asyncio.wait_for(outbox.due(), 5.0)  # due, though nothing was gathered
    assert outbox.take() == [] and not outbox.expecting
    outbox.expect(time.monotonic() - 61.0)
    outbox.add([RECORD], message(1))  # read just now: its linger counts from the last flush, not from it
    await asyncio.wait_for(outbox.due(), 5.0)
    assert [owner.mid for _, owner in outbox.take()] == [1]


def test_the_reader_rests_on_steadily_only_below_half_a_batch() -> None:
    outbox = Outbox(batch=100, linger=0.05)
    assert not outbox.steady()  # nothing came: read on events
    for mid in range(49):
        outbox.add([RECORD], message(mid))
    assert outbox.steady()
    outbox.add([RECORD], message(49))
    assert not outbox.steady()  # near a batch: read on events, so a full batch goes at once
    assert not Outbox(batch=100, linger=0).steady()


async def test_read_now_can_leave_the_reader_resting_till_the_next_read_now() -> None:
    client, received, ours, theirs = _client_on_a_socketpair()
    io = PahoOnAsyncio(may_read=lambda: True)
    io.attach(client)
    io.sock = ours
    try:
        theirs.sendall(publish_packet("a/1", b"1", qos=1, mid=1, mqtt5=True))
        await asyncio.sleep(0.01)
        io.read_now(rest=lambda: True)
        assert received == [1] and io.resting and not io.reading
        theirs.sendall(publish_packet("a/1", b"1", qos=1, mid=2, mqtt5=True))
        await asyncio.sleep(0.05)
        assert received == [1]  # no wakeup for it: the next flush reads it
        io.resume()  # e.g. acks made room: still resting
        await asyncio.sleep(0.05)
        assert received == [1]
        io.read_now(rest=lambda: False)
        assert received == [1, 2] and io.reading and not io.resting
    finally:
        io.pause()
        ours.close()
        theirs.close()


class _NoRepr(socket.socket):
    def __repr__(self) -> str:  # two system calls (its addresses), on every resume if asked
        raise AssertionError("the reader formatted the socket's repr")


async def test_pausing_and_resuming_the_reader_never_formats_the_sockets_repr() -> None:
    client = BulkReadClient(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, on_publish=lambda *m: None)
    plain, theirs = socket.socketpair()
    ours = _NoRepr(fileno=plain.detach())
    ours.setblocking(False)
    client._sock = ours
    io = PahoOnAsyncio(may_read=lambda: True)
    io.attach(client)
    io.sock = ours
    try:
        for _ in range(3):
            io.resume()
            assert io.reading
            io.pause()
    finally:
        ours.close()
        theirs.close()
