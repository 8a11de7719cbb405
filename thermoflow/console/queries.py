"""The console's SQL: what each page reads, and its one write of its own (redrive records).

An acknowledgement is not here: the console calls :func:`thermoflow.alerts.ack.acknowledge_incident_async`,
as `thermoflow alerts ack` does.

Every function takes a connection (autocommit, from :class:`~thermoflow.console.pool.Pool`)
and returns plain data for the templates. User text only ever travels as a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from thermoflow.alerts.queries import _COLUMNS, AckError, IncidentRow
from thermoflow.readings_query import Plan
from thermoflow.readings_query import sql as history_sql

__all__ = ["AckError", "IncidentRow"]


@dataclass(frozen=True)
class IncidentFilter:
    status: str | None = None  # firing, acknowledged, resolved, or "open" (not resolved)
    severity: str | None = None
    device_id: str | None = None
    rule_id: str | None = None
    limit: int = 100


def incidents(conn: psycopg.Connection[Any], where: IncidentFilter) -> list[IncidentRow]:
    """Newest first, filtered."""
    with conn.cursor(row_factory=class_row(IncidentRow)) as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM incidents"
            " WHERE (%(status)s::text IS NULL OR status = %(status)s"
            "        OR (%(status)s = 'open' AND status <> 'resolved'))"
            " AND (%(severity)s::text IS NULL OR severity = %(severity)s)"
            " AND (%(device)s::text IS NULL OR device_id = %(device)s)"
            " AND (%(rule)s::text IS NULL OR rule_id = %(rule)s)"
            " ORDER BY opened_at DESC, incident_id LIMIT %(limit)s",
            {"status": where.status, "severity": where.severity, "device": where.device_id,
             "rule": where.rule_id, "limit": where.limit},
        )  # fmt: skip
        return cur.fetchall()


def incident(conn: psycopg.Connection[Any], incident_id: str) -> IncidentRow | None:
    with conn.cursor(row_factory=class_row(IncidentRow)) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM incidents WHERE incident_id = %s", (incident_id,))
        return cur.fetchone()


@dataclass(frozen=True)
class Step:
    """One line of an incident's timeline."""

    at: datetime
    what: str  # opened, escalated, acknowledged, resolved
    severity: str | None = None
    by: str | None = None
    note: str | None = None


def timeline(conn: psycopg.Connection[Any], row: IncidentRow) -> list[Step]:
    """Opened, escalated (first critical after a warning start), acknowledged (who, note), resolved.

    The alert events of the incident are those of its device, rule and kind from its opening on.
    """
    conditions = ["above", "below"] if row.kind == "threshold" else [row.kind]
    events = conn.execute(
        "SELECT severity, min(reading_ts) FROM alert_events WHERE device_id = %s AND rule_id = %s"
        " AND condition = ANY(%s) AND reading_ts >= %s AND (%s::timestamptz IS NULL OR reading_ts <= %s)"
        " GROUP BY severity",
        (row.device_id, row.rule_id, conditions, row.opened_at, row.resolved_at, row.resolved_at),
    ).fetchall()
    first = {str(severity): at for severity, at in events}
    steps = [Step(row.opened_at, "opened", severity=_first_severity(first, row.severity))]
    if "warning" in first and "critical" in first and first["critical"] > first["warning"]:
        steps.append(Step(first["critical"], "escalated", severity="critical"))
    if row.acknowledged_at is not None:  # set by `thermoflow alerts ack` and the console alike
        steps.append(Step(row.acknowledged_at, "acknowledged", by=row.acknowledged_by, note=row.ack_note))
    if row.resolved_at is not None:
        steps.append(Step(row.resolved_at, "resolved"))
    return sorted(steps, key=lambda step: step.at)


def _first_severity(first: dict[str, datetime], fallback: str) -> str:
    if not first:
        return fallback
    return min(first, key=lambda severity: first[severity])


def history(conn: psycopg.Connection[Any], plan: Plan, now: datetime) -> list[dict[str, Any]]:
    """A device's temperature as :mod:`thermoflow.readings_query` plans it (from a rollup past an hour)."""
    query, params = history_sql(plan, now)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query.encode(), params)
        return cur.fetchall()


def alert_points(
    conn: psycopg.Connection[Any], device_id: str, *, since: datetime, limit: int = 5000
) -> list[tuple[datetime, float, str, str]]:
    """The device's alert events since ``since``: reading time, value, severity, condition."""
    rows = conn.execute(
        "SELECT reading_ts, value, severity, condition FROM alert_events"
        " WHERE device_id = %s AND reading_ts >= %s AND condition IN ('above', 'below')"
        " ORDER BY reading_ts LIMIT %s",
        (device_id, since, limit),
    ).fetchall()
    return [(ts, float(value), str(severity), str(condition)) for ts, value, severity, condition in rows]


@dataclass(frozen=True)
class Fleet:
    """The database half of the overview."""

    open_by_severity: dict[str, int]
    offline: list[tuple[str, datetime]]  # device, offline since
    offline_count: int


def fleet(conn: psycopg.Connection[Any], *, offline_limit: int = 50) -> Fleet:
    """Open incidents by severity and the devices offline now (their open offline incidents)."""
    by_severity = {
        str(severity): int(count)
        for severity, count in conn.execute(
            "SELECT severity, count(*) FROM incidents WHERE status <> 'resolved' GROUP BY severity"
        )
    }
    offline = conn.execute(
        "SELECT device_id, opened_at, count(*) OVER () FROM incidents"
        " WHERE status <> 'resolved' AND kind = 'offline' ORDER BY opened_at LIMIT %s",
        (offline_limit,),
    ).fetchall()
    return Fleet(
        open_by_severity=by_severity,
        offline=[(str(device), at) for device, at, _ in offline],
        offline_count=int(offline[0][2]) if offline else 0,
    )


@dataclass(frozen=True)
class Redrive:
    deadletter_topic: str
    partition: int
    offset: int
    mqtt_topic: str
    error: str


def claim_redrives(conn: psycopg.Connection[Any], letters: list[Redrive], *, by: str) -> list[Redrive]:
    """Record ``letters`` as redriven by ``by``; returns those not redriven before (caller's transaction)."""
    claimed: list[Redrive] = []
    for letter in letters:
        row = conn.execute(
            "INSERT INTO deadletter_redrives (deadletter_topic, deadletter_partition, deadletter_offset,"
            " mqtt_topic, error, redriven_by) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            (letter.deadletter_topic, letter.partition, letter.offset, letter.mqtt_topic, letter.error, by),
        ).fetchone()
        if row is not None:
            claimed.append(letter)
    return claimed


def redriven(conn: psycopg.Connection[Any], topic: str) -> dict[tuple[int, int], tuple[str, datetime]]:
    """Dead letters of ``topic`` already redriven, by (partition, offset): who and when."""
    rows = conn.execute(
        "SELECT deadletter_partition, deadletter_offset, redriven_by, redriven_at FROM deadletter_redrives"
        " WHERE deadletter_topic = %s ORDER BY redriven_at DESC LIMIT 100000",
        (topic,),
    ).fetchall()
    return {(int(p), int(o)): (str(by), at) for p, o, by, at in rows}
