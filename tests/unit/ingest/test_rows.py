"""Readings the database could never store are errors at decode, named by their field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoflow.ingest.rows import rows_from_values


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (b'{"device_id":"f-1","value":1.5,"ts":1e19,"received_at":2.0}', "`ts`"),
        (b'{"device_id":"f-1","value":1.5,"ts":1.0,"received_at":-1e12}', "`received_at`"),
        (b'{"device_id":"f\\u00001","value":1.5,"ts":1.0,"received_at":2.0}', "`device_id`"),
        (b'{"device_id":"f-1","metric":"t\\u0000","value":1.5,"ts":1.0,"received_at":2.0}', "`metric`"),
        (b'{"device_id":"f-1","value":1.5,"ts":1.0,"seq":9223372036854775808,"received_at":2.0}', "`seq`"),
        (b'{"device_id":"f-1","value":1.5,"ts":1.0,"seq":-9223372036854775809,"received_at":2.0}', "`seq`"),
    ],
)
def test_an_unstorable_reading_is_an_error_naming_its_field_and_its_neighbours_are_rows(
    value: bytes, field: str
) -> None:
    good = b'{"device_id":"f-2","value":1.5,"ts":1.0,"seq":9223372036854775807,"received_at":2.0}'
    batch = rows_from_values([good, value, good])
    assert [index for index, _ in batch.errors] == [1]
    assert batch.errors[0][1].startswith("unstorable reading: " + field)
    assert len(batch.rows) == 2 and batch.sources == [0, 2]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b'{"device_id":"a","value":1.5,"ts":1.0,"seq":3,"received_at":2.0}',
                b'{"device_id":"b,\\"c","metric":"rh","value":-0.25,"ts":1e9,"received_at":1e9}',
                b'{"device_id":"d","value":1.5,"ts":1e19,"received_at":2.0}',  # unstorable
                b'{"device_id":"e","value":1.5,"ts":1.0,"received_at":2.0,"extra":[1]}',  # an unknown field
                b'{"device_id":"f","value":1.5,"ts":1.0',  # a truncated reading...
                b'"received_at":2.0}',  # ...and a tail that would join it
                b"not json",
                b'{"device_id":"g","value":1.5,"ts":1.0,"received_at":2.0,"x":'
                + b"[" * 5000
                + b"]" * 5000
                + b"}",
                b"",
                None,
            ]
        ),
        max_size=8,
    )
)
def test_a_batch_makes_the_rows_and_errors_its_records_make_one_by_one(values: list[bytes | None]) -> None:
    """Whether the batch takes the one-call decode or not, each record is a row or an error of its own."""
    alone = [rows_from_values([value]) for value in values]
    batch = rows_from_values(values)
    assert batch.rows == [row for one in alone for row in one.rows]
    assert batch.sources == [index for index, one in enumerate(alone) if one.rows]
    assert batch.errors == [(index, one.errors[0][1]) for index, one in enumerate(alone) if one.errors]
