"""Readings the database could never store are errors at decode, named by their field."""

from __future__ import annotations

import pytest

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
