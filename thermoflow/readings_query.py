"""A device's history from the right rollup: the pure half of `thermoflow readings` (no I/O).

The database has the raw ``readings`` and two rollups of them (migration ``050_rollups.sql``):
``readings_1m`` and ``readings_1h``, each row a (device, metric, bucket) with ``min_value``,
``max_value``, ``avg_value``, ``sample_count`` and ``last_value``. On TimescaleDB they are
continuous aggregates, on plain PostgreSQL views, with the same columns. :func:`plan` picks
the coarsest source whose bucket divides the step asked for, so a month at one point an hour
reads about 720 rows per metric from ``readings_1h`` instead of 43,200 raw ones; :func:`sql`
writes one query that runs on both back ends (``date_bin``, not ``time_bucket``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

Source = Literal["readings", "readings_1m", "readings_1h"]

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION: Final = re.compile(r"(\d{1,6})\s*([smhdw])")

#: The steps ``--every`` takes, in seconds; ``raw`` is every stored reading, no bucketing.
EVERY: Final[dict[str, int | None]] = {
    "raw": None,
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "1h": 3600,
    "6h": 21_600,
    "1d": 86_400,
}
#: The longest ``--since``: past the longest rollup retention, nothing would be left to show.
MAX_SINCE: Final = timedelta(days=36_500)
#: Raw rows for at most this long a range: beyond it a rollup answers with far fewer rows.
MAX_RAW: Final = timedelta(days=1)
#: With no ``--every``: the step for a range up to each length (about 720 points at most up to
#: two years; daily points beyond).
_DEFAULT_EVERY: Final = (
    (timedelta(hours=1), "raw"),
    (timedelta(hours=12), "1m"),
    (timedelta(days=2), "5m"),
    (timedelta(days=7), "15m"),
    (timedelta(days=30), "1h"),
    (timedelta(days=180), "6h"),
)
MAX_ID: Final = 256  # the event contract's longest device_id or metric (thermoflow.events.NonEmpty)


class QueryError(ValueError):
    """A flag of `thermoflow readings` that cannot work; the message says which and why."""


def parse_duration(text: str) -> timedelta:
    """``--since``: a positive whole number and a unit, s, m, h, d or w.

    >>> parse_duration("7d"), parse_duration("90m")
    (datetime.timedelta(days=7), datetime.timedelta(seconds=5400))
    >>> parse_duration("-1d")
    Traceback (most recent call last):
    ...
    thermoflow.readings_query.QueryError: '-1d' is not a duration like 90m, 24h, 7d or 2w (a whole number ...
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise QueryError(
            f"{text!r} is not a duration like 90m, 24h, 7d or 2w (a whole number above 0 and s, m, h, d or w)"
        )
    duration = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if duration > MAX_SINCE:
        raise QueryError(f"{text!r} is longer than {MAX_SINCE.days} days")
    return duration


def check_name(what: str, value: str) -> str:
    """A device id or metric as the event contract admits it: 1 to 256 printable characters.

    >>> check_name("device", "freezer-0042")
    'freezer-0042'
    >>> check_name("device", "f\\x00'; DROP TABLE readings")
    Traceback (most recent call last):
    ...
    thermoflow.readings_query.QueryError: the device contains a control character (U+0000), which ...
    """
    if not value or len(value) > MAX_ID:
        raise QueryError(f"the {what} must be 1 to {MAX_ID} characters, got {len(value)}")
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise QueryError(
                f"the {what} contains a control character (U+{ord(char):04X}), which no device id has"
            )
    return value


@dataclass(frozen=True)
class Plan:
    """What to read: ``source`` bucketed by ``step_seconds`` (None: raw rows) from ``start`` on."""

    device_id: str
    metric: str | None
    since: timedelta
    every: str
    step_seconds: int | None
    source: Source

    def start(self, now: datetime) -> datetime:
        """The first bucket's start: ``now - since``, down to a whole step so no bucket is cut."""
        start = now - self.since
        if self.step_seconds is None:
            return start
        epoch = start.timestamp()
        return datetime.fromtimestamp(epoch - epoch % self.step_seconds, tz=start.tzinfo)


def default_every(since: timedelta) -> str:
    """The step for ``since`` when ``--every`` is not given: about 720 points at most (up to two years).

    >>> [default_every(timedelta(days=days)) for days in (0.02, 7, 30)]
    ['raw', '15m', '1h']
    """
    for longest, every in _DEFAULT_EVERY:
        if since <= longest:
            return every
    return "1d"


def source_for(step_seconds: int | None) -> Source:
    """The coarsest relation whose bucket divides the step: its rows roll up into the step exactly.

    >>> source_for(None), source_for(900), source_for(21_600)
    ('readings', 'readings_1m', 'readings_1h')
    """
    if step_seconds is None:
        return "readings"
    if step_seconds % 3600 == 0:
        return "readings_1h"
    return "readings_1m"


def plan(device_id: str, *, since: str, every: str | None = None, metric: str | None = None) -> Plan:
    """Check the flags of `thermoflow readings` and choose the source; raises :class:`QueryError`.

    >>> p = plan("freezer-0042", since="30d")
    >>> p.every, p.source
    ('1h', 'readings_1h')
    >>> plan("freezer-0042", since="24h", every="1m").source
    'readings_1m'
    """
    check_name("device", device_id)
    if metric is not None:
        check_name("metric", metric)
    duration = parse_duration(since)
    chosen = every if every is not None else default_every(duration)
    if chosen not in EVERY:
        raise QueryError(f"--every {chosen!r} is not one of {', '.join(EVERY)}")
    step = EVERY[chosen]
    if step is None and duration > MAX_RAW:
        raise QueryError(
            f"--every raw reads raw rows for --since up to 1d at most; use --every 1m for {since}"
        )
    return Plan(device_id, metric, duration, chosen, step, source_for(step))


#: The columns of every result row, whatever the source.
COLUMNS: Final = ("time", "metric", "min", "max", "avg", "count", "last")

_RAW_SQL: Final = """
SELECT ts AS time, metric, value AS min, value AS max, value AS avg, 1::bigint AS count, value AS last
FROM readings
WHERE device_id = %(device)s AND ts >= %(start)s AND ts <= %(end)s {metric}
ORDER BY metric, ts
"""
# A rollup's buckets regrouped into the step: the average weighted by each bucket's count, the
# last value of the latest bucket. date_bin from the epoch gives UTC-aligned buckets, as
# time_bucket does, on plain PostgreSQL and on TimescaleDB alike.
_ROLLUP_SQL: Final = """
SELECT date_bin(%(step)s, bucket, timestamptz '2000-01-01 00:00+00') AS time, metric,
       min(min_value) AS min, max(max_value) AS max,
       sum(avg_value * sample_count) / sum(sample_count) AS avg, sum(sample_count)::bigint AS count,
       (array_agg(last_value ORDER BY bucket DESC))[1] AS last
FROM {source}
WHERE device_id = %(device)s AND bucket >= %(start)s AND bucket <= %(end)s {metric}
GROUP BY 1, 2
ORDER BY metric, 1
"""


def sql(p: Plan, now: datetime) -> tuple[str, dict[str, object]]:
    """The query for a plan and its parameters (psycopg's named placeholders).

    ``source`` is one of three fixed names (:data:`Source`), never user text; the device and
    metric are parameters.
    """
    params: dict[str, object] = {"device": p.device_id, "start": p.start(now), "end": now}
    metric = ""
    if p.metric is not None:
        metric = "AND metric = %(metric)s"
        params["metric"] = p.metric
    if p.step_seconds is None:
        return _RAW_SQL.format(metric=metric), params
    params["step"] = timedelta(seconds=p.step_seconds)
    return _ROLLUP_SQL.format(source=p.source, metric=metric), params
