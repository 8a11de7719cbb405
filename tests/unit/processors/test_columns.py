"""decode_batch over records that carry no partition (aiokafka's raw records), given the partitions."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoflow.events import decode_reading
from thermoflow.processors.columns import RawRecord, decode_batch


@dataclass(frozen=True)
class Raw:
    """What aiokafka's DefaultRecord offers: no topic, no partition."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def reading(device: str, value: float) -> bytes:
    return b'{"device_id": "%s", "value": %r, "ts": 10.0, "received_at": 10.5}' % (device.encode(), value)


def test_valid_records_take_their_partitions_from_the_array() -> None:
    records = [Raw(7, b"a", reading("a", 1.0)), Raw(3, b"b", reading("b", 2.0))]
    batch, rejects = decode_batch("t", records, np.array([4, 9]))
    assert rejects == []
    assert batch.partition.tolist() == [4, 9] and batch.offset.tolist() == [7, 3]


def test_a_bad_record_becomes_a_reject_naming_its_partition_and_keeps_its_headers() -> None:
    records = [
        Raw(7, b"a", reading("a", 1.0)),
        Raw(8, b"b", b"not json", (("traceparent", b"00-x"),)),
        Raw(2, b"c", reading("c", 3.0)),
    ]
    batch, rejects = decode_batch("t", records, np.array([4, 4, 5]))
    assert batch.partition.tolist() == [4, 5] and batch.offset.tolist() == [7, 2]
    (reject,) = rejects
    assert reject.record == RawRecord(b"b", b"not json", 4, 8, (("traceparent", b"00-x"),))
    assert "invalid reading" in reject.error or "JSON" in reject.error


def test_pairs_are_device_and_metric_whether_a_batch_has_one_metric_or_several() -> None:
    def raw(offset: int, device: str, metric: str) -> Raw:
        body = b'{"device_id": "%s", "metric": "%s", "value": 1.0, "ts": 1.0, "received_at": 1.0}'
        return Raw(offset, device.encode(), body % (device.encode(), metric.encode()))

    one, _ = decode_batch("t", [raw(0, "a", "t"), raw(1, "b", "t"), raw(2, "a", "t")], np.zeros(3, np.int64))
    assert (one.columns.device_ids, one.columns.metrics, one.columns.pair.tolist()) == (
        ["a", "b"], ["t", "t"], [0, 1, 0]
    )  # fmt: skip
    mixed = [raw(0, "a", "t"), raw(1, "a", "h"), raw(2, "b", "t"), raw(3, "a", "t")]
    two, _ = decode_batch("t", mixed, np.zeros(4, np.int64))
    assert (two.columns.device_ids, two.columns.metrics, two.columns.pair.tolist()) == (
        ["a", "a", "b"], ["t", "h", "t"], [0, 1, 2, 0]
    )  # fmt: skip


def test_a_record_holding_two_lines_is_never_read_as_two_records() -> None:
    """The fast path joins records by newlines: a record of two readings on two lines beside a blank
    one would decode to as many readings as records, each credited to the wrong record."""
    two_lines = reading("a", 1.0) + b"\n" + reading("b", 2.0)
    records = [Raw(1, b"a", two_lines), Raw(2, b"x", b" "), Raw(3, b"c", reading("c", 3.0))]
    batch, rejects = decode_batch("t", records, np.array([0, 0, 0]))
    assert [r.record.offset for r in rejects] == [1, 2]
    assert batch.offset.tolist() == [3] and batch.device_id(0) == "c"


def test_a_record_of_two_readings_or_one_closing_the_array_is_rejected_alone() -> None:
    """The fast path decodes the records as one JSON array: a record holding a comma-separated
    pair, or one that ends the array early, must not shift the readings of the others."""
    two = reading("a", 1.0) + b"," + reading("b", 2.0)
    closing = reading("x", 9.0) + b"]"
    records = [Raw(1, b"a", two), Raw(2, b"c", reading("c", 3.0)), Raw(3, b"x", closing)]
    batch, rejects = decode_batch("t", records, np.array([0, 0, 0]))
    assert [r.record.offset for r in rejects] == [1, 3]
    assert batch.offset.tolist() == [2] and batch.device_id(0) == "c"
    ok = [Raw(4, b"d", reading("d", 4.0) + b"\n"), Raw(5, b"e", b" " + reading("e", 5.0))]
    batch, rejects = decode_batch("t", ok, np.array([0, 0]))  # whitespace around a record is JSON's
    assert rejects == [] and [batch.device_id(i) for i in range(2)] == ["d", "e"]


def one_by_one(records: list[Raw]) -> tuple[list[tuple[int, str, float]], list[int]]:
    """What decoding each record alone makes of them: (offset, device, value) kept, offsets rejected."""
    kept, rejected = [], []
    for record in records:
        try:
            r = decode_reading(record.value or b"")
        except ValueError:
            rejected.append(record.offset)
        else:
            kept.append((record.offset, r.device_id, r.value))
    return kept, rejected


def decoded(records: list[Raw]) -> tuple[list[tuple[int, str, float]], list[int]]:
    batch, rejects = decode_batch("t", records, np.zeros(len(records), np.int64))
    kept = [
        (int(batch.offset[i]), batch.device_id(i), float(batch.columns.values[i])) for i in range(len(batch))
    ]
    return kept, [reject.record.offset for reject in rejects]


def test_records_that_would_join_into_readings_are_each_rejected() -> None:
    """Three bad records that, joined by commas into one array, read as three good readings: a
    truncated reading and its tail (across an unknown field's array, or an open string), beside
    a record of two readings. Each is dead-lettered; the readings of the good ones stay theirs."""
    head = b'{"device_id": "a", "value": 1.0, "ts": 1.0, "received_at": 1.0, "x": '
    two = reading("c1", 3.0) + b"," + reading("c2", 4.0)
    for cut in ([head + b"[[1", b"2]]}"], [head + b'"', b'"}'], [head[:-7], b'"ts": 1.0}']):
        records = [
            Raw(0, b"g", reading("g", 5.0)),
            Raw(1, b"a", cut[0]),
            Raw(2, b"a", cut[1]),
            Raw(3, b"c", two),
        ]
        assert decoded(records) == one_by_one(records) == ([(0, "g", 5.0)], [1, 2, 3])


def test_a_record_nested_deeper_than_the_stack_is_rejected_alone_with_its_reason() -> None:
    """msgspec raises RecursionError there, which the one-by-one decode let through: the whole
    batch failed, and the worker read it again after each restart."""
    deep = reading("d", 1.0)[:-1] + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    records = [Raw(0, b"g", reading("g", 5.0)), Raw(1, b"d", deep), Raw(2, b"h", reading("h", 6.0))]
    batch, rejects = decode_batch("t", records, np.zeros(3, np.int64))
    assert [batch.device_id(i) for i in range(len(batch))] == ["g", "h"]
    assert [(r.record.offset, r.error.split(":")[0]) for r in rejects] == [(1, "invalid reading")]


_reading = st.fixed_dictionaries(
    {
        "device_id": st.sampled_from(["a", "b,c", 'q"],[']),
        "value": st.floats(-50, 50),
        "ts": st.just(1.0),
        "received_at": st.just(2.0),
    },
    optional={
        "x": st.recursive(
            st.text(",]", max_size=3) | st.integers(), lambda inner: st.lists(inner, max_size=3)
        ),
    },
).map(lambda r: json.dumps(r, separators=(",", ":")).encode())


@st.composite
def _records(draw: st.DrawFn) -> list[bytes]:
    """One record's worth: a reading; two run together; one cut in two at one of its commas (in a
    string, between fields or in an array), which joined by a comma again is that reading; or blank."""
    kind = draw(st.sampled_from(["whole", "two", "cut", "blank"]))
    one = draw(_reading)
    if kind == "whole":
        return [one]
    if kind == "two":
        return [one + draw(st.sampled_from([b",", b"\n,", b"]\n,[", b" "])) + draw(_reading)]
    if kind == "cut":
        at = draw(st.sampled_from([i for i, byte in enumerate(one) if byte == ord(",")] or [len(one) // 2]))
        return [one[:at], one[at + 1 :]]
    return [draw(st.sampled_from([b"", b" ", b"\n"]))]


@settings(max_examples=300, deadline=None)
@given(st.lists(_records(), min_size=1, max_size=8))
def test_any_run_of_whole_joined_and_cut_readings_decodes_as_each_record_alone(
    units: list[list[bytes]],
) -> None:
    """Readings (some with unknown fields holding strings and nested arrays) whole, run together,
    cut in two or blank: the batch keeps exactly the records that are one valid reading alone,
    each with its own reading, and rejects the rest."""
    records = [Raw(offset, b"k", value) for offset, value in enumerate(itertools.chain.from_iterable(units))]
    assert decoded(records) == one_by_one(records)
