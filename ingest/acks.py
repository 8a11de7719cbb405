"""The bridge's in-flight accounting: messages held between reading and acking, acked in order (pure).

An MQTT message is *held* from the moment the bridge reads it until its PUBACK is queued (QoS 1)
or, for QoS 0, until its records are in Kafka. :class:`AckLine` keeps them in arrival order and
lets a message go only when it and every message before it are in Kafka: MQTT 3.1.1 section 4.6
asks for acks in order, and an ack before the record is durable would lose it on a crash.

The window is the bridge's own: the reader hands on a PUBLISH only while :meth:`AckLine.room`
is positive, so ``len(line) <= window`` always, whatever the broker sends. Mosquitto 2.0 keeps
to an MQTT 5 receive maximum only until the first PUBACK (then it sends all it has queued) and
resends every unacked message at once on a resumed session, so the receive maximum alone does
not bound what the bridge holds, nor the records a crash of the bridge leaves in Kafka unacked.

When the connection is lost the held messages are dropped (:meth:`AckLine.drop_all`): the
broker sends the QoS 1 ones again on the resumed session, so their records that have not yet
reached Kafka need not be sent, and no ack may ever go out for them (a packet id of the old
connection means another message on the new one).

    >>> line = AckLine(window=3)
    >>> a, b = Held(1, 1, 0.0, records=1), Held(2, 1, 0.0, records=2)
    >>> line.append(a), line.append(b)  # the room left
    (2, 1)
    >>> line.delivered(b); line.delivered(b); [m.mid for m in line.pop_ready()]  # b waits for a
    []
    >>> line.delivered(a); [m.mid for m in line.pop_ready()], line.unacked
    ([1, 2], 0)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import msgspec


class Held(msgspec.Struct, gc=False):
    """One MQTT message the bridge holds: acked when ``done`` and first in line.

    ``records`` counts its Kafka records not yet acked by Kafka; set it once its translation is
    known, before any of them can be delivered.

    A msgspec struct, built in C: a third of the cost of a slotted dataclass's Python
    ``__init__``, once per message. Its fields are numbers only, so the cyclic GC need not track it.
    """

    mid: int
    qos: int
    received: float  # monotonic, for the bridge latency
    records: int = 0
    done: bool = False
    dropped: bool = False  # its connection was lost: never acked, its records not (re)sent


class AckLine:
    """Held messages in arrival order, at most ``window`` of them.

    Counters, over the line's life: ``taken`` messages appended, ``acked`` let go from the head
    (PUBACK queued, or QoS 0 in Kafka), ``dropped`` given up unacked. ``unacked`` is what was
    taken and never acked: held now, or dropped for the broker to send again.
    """

    def __init__(self, *, window: int) -> None:
        if window < 1:
            raise ValueError(f"the window must hold at least one message, not {window}")
        self.window = window
        self._line: deque[Held] = deque()
        self.taken = 0
        self.acked = 0
        self.dropped = 0
        self.peak = 0  # the most ever held at once

    def __len__(self) -> int:
        return len(self._line)

    def __iter__(self) -> Iterator[Held]:
        return iter(self._line)

    def room(self) -> int:
        """How many more messages may be taken now (0 when the window is full)."""
        return self.window - len(self._line)

    def append(self, message: Held) -> int:
        """Take one message, at the end of the line (the reader checks :meth:`room` first); returns
        the room left (:meth:`room`, without a second call per message)."""
        line = self._line
        line.append(message)
        self.taken += 1
        held = len(line)
        if held > self.peak:
            self.peak = held
        return self.window - held

    @staticmethod
    def delivered(message: Held) -> None:
        """Kafka acked one of the message's records (ignored for a dropped message)."""
        if message.dropped:
            return
        message.records -= 1
        if message.records <= 0:
            message.done = True

    def pop_ready(self) -> list[Held]:
        """Let go, in arrival order, every message at the head whose records are all in Kafka."""
        line = self._line
        ready: list[Held] = []
        while line and line[0].done:
            ready.append(line.popleft())
        self.acked += len(ready)
        return ready

    def drop_all(self) -> int:
        """Give up every held message unacked (the connection is gone); returns how many."""
        count = len(self._line)
        for message in self._line:
            message.dropped = True
        self._line.clear()
        self.dropped += count
        return count

    @property
    def unacked(self) -> int:
        return self.taken - self.acked
