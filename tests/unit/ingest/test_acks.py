"""The bridge's ack line: acks in arrival order, never before Kafka has every record, within the window.

The model is the bridge's: messages arrive (each with one or more Kafka records), Kafka acks the
records in any order, the connection may drop; PUBACKs come out of ``pop_ready``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoflow.ingest.acks import AckLine, Held

# One step of a run: ("arrive", records) | ("kafka", pick) acks one outstanding record | ("drop", 0).
steps = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.integers(1, 3)),
        st.tuples(st.just("kafka"), st.integers(0, 10_000)),
        st.tuples(st.just("drop"), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(1, 8))
def test_any_interleaving_of_kafka_acks_gives_pubacks_in_arrival_order_after_durability(
    run: list[tuple[str, int]], window: int
) -> None:
    line = AckLine(window=window)
    outstanding: list[Held] = []  # one entry per record sent to Kafka and not yet acked by it
    durable: dict[int, int] = {}  # message number -> records Kafka has
    records_of: dict[int, int] = {}
    number_of: dict[int, int] = {}  # id(held) -> arrival number
    acked: list[int] = []
    dropped: set[int] = set()
    arrived = 0
    for action, value in run:
        if action == "arrive":
            if line.room() <= 0:  # the reader holds the message back
                continue
            held = Held(mid=arrived % 65_535 + 1, qos=1, received=0.0, records=value)
            number_of[id(held)] = arrived
            records_of[arrived], durable[arrived] = value, 0
            line.append(held)
            outstanding.extend([held] * value)
            arrived += 1
        elif action == "kafka" and outstanding:
            held = outstanding.pop(value % len(outstanding))
            durable[number_of[id(held)]] += 1
            line.delivered(held)
        elif action == "drop":
            dropped.update(number_of[id(held)] for held in line)
            line.drop_all()
        for held in line.pop_ready():
            acked.append(number_of[id(held)])
        assert len(line) <= window
    # In arrival order, each at most once, none before all its records were durable, none dropped.
    assert acked == sorted(set(acked))
    assert all(durable[n] == records_of[n] for n in acked)
    assert not dropped & set(acked)
    # Nothing acked is still in line, and an ack waits only for its own records or an earlier message's.
    waiting = [number_of[id(held)] for held in line]
    assert not set(waiting) & set(acked)
    if waiting:
        head = waiting[0]
        assert durable[head] < records_of[head]
    assert line.unacked == arrived - len(acked)
    assert line.peak <= window


def test_a_dropped_message_is_never_acked_even_when_its_records_land_later() -> None:
    line = AckLine(window=10)
    old = Held(mid=5, qos=1, received=0.0, records=1)
    line.append(old)
    assert line.drop_all() == 1
    new = Held(mid=5, qos=1, received=0.0, records=1)  # the broker sends it again, same packet id
    line.append(new)
    line.delivered(old)  # the old connection's record lands in Kafka after the reconnect
    assert line.pop_ready() == []  # no PUBACK for packet id 5 on the new connection yet
    line.delivered(new)
    assert line.pop_ready() == [new]
    assert (line.taken, line.acked, line.dropped, line.unacked) == (2, 1, 1, 1)


def test_room_counts_down_to_zero_and_the_window_must_hold_one() -> None:
    line = AckLine(window=2)
    line.append(Held(1, 1, 0.0, records=1))
    line.append(Held(2, 0, 0.0, records=1))
    assert line.room() == 0 and line.peak == 2
    with pytest.raises(ValueError, match="at least one"):
        AckLine(window=0)
