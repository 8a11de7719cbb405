"""decode_batch over records that carry no partition (aiokafka's raw records), given the partitions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
