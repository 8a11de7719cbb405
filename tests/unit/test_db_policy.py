"""The writers' error policy, without a database: which errors retry, and the batch split."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import psycopg
import pytest

from thermoflow import db


async def _no_retry(attempt: Callable[[], Awaitable[int]]) -> int:
    return await attempt()


async def test_a_batch_is_split_until_each_refused_item_stands_alone_and_the_rest_is_written() -> None:
    items = list(range(1000))
    bad = {3, 500, 501, 999}
    written: list[int] = []
    calls = 0

    async def write(part: Sequence[int]) -> int:
        nonlocal calls
        calls += 1
        if bad & set(part):
            raise psycopg.errors.NumericValueOutOfRange("value out of range")
        written.extend(part)
        return len(part)

    added, refused = await db.write_isolating(items, write=write, retry=_no_retry)
    assert added == len(written) == 996 and sorted(written) == [i for i in items if i not in bad]
    assert [index for index, _ in refused] == sorted(bad)
    assert all(reason == "database refused it: value out of range" for _, reason in refused)
    assert calls < 100  # a split, not one write per item


async def test_an_error_that_is_no_data_error_is_not_split_but_raised() -> None:
    async def write(part: Sequence[int]) -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await db.write_isolating([1, 2, 3], write=write, retry=_no_retry)


async def test_transient_errors_are_retried_until_the_write_succeeds_and_reported_each_time() -> None:
    failures = [psycopg.errors.AdminShutdown("terminating"), psycopg.OperationalError("connection lost")]
    reported: list[str] = []

    async def attempt() -> int:
        if failures:
            raise failures.pop(0)
        return 7

    result = await db.retry_transient(
        attempt, stop=asyncio.Event(), on_retry=lambda exc, _: reported.append(str(exc)), first=0.001
    )
    assert result == 7 and reported == ["terminating", "connection lost"]


async def test_a_data_error_is_raised_at_once_and_a_conflict_after_a_few_tries() -> None:
    tries = 0

    async def refused() -> int:
        nonlocal tries
        tries += 1
        raise psycopg.errors.DatetimeFieldOverflow("timestamp out of range")

    with pytest.raises(psycopg.errors.DatetimeFieldOverflow):
        await db.retry_transient(refused, stop=asyncio.Event(), on_retry=lambda *_: None, first=0.001)
    assert tries == 1

    tries = 0

    async def race() -> int:
        nonlocal tries
        tries += 1
        raise psycopg.errors.UniqueViolation("duplicate key")

    with pytest.raises(psycopg.errors.UniqueViolation):
        await db.retry_transient(race, stop=asyncio.Event(), on_retry=lambda *_: None, first=0.001)
    assert tries == db.CONFLICT_ATTEMPTS


async def test_stopping_ends_the_retries_of_an_outage() -> None:
    stop = asyncio.Event()

    async def down() -> int:
        raise psycopg.OperationalError("connection refused")

    with pytest.raises(db.Stopped):
        await db.retry_transient(down, stop=stop, on_retry=lambda *_: stop.set(), first=30.0)


def test_unstorable_values_are_named_by_their_field() -> None:
    assert db.unstorable_epoch("ts", float("nan")) is not None
    assert db.unstorable_epoch("ts", 1_764_000_000.0) is None
    assert db.unstorable_int8("seq", -(2**63)) is None and db.unstorable_int8("seq", -(2**63) - 1)
    assert db.unstorable_text("metric", "temp\x00") == (
        "`metric` contains a NUL character, which PostgreSQL text cannot hold"
    )
