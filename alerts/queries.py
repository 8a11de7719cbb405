"""What operators ask of the incidents table: list them, acknowledge one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from thermoflow.events import Condition, IncidentKind


@dataclass(frozen=True)
class IncidentRow:
    incident_id: str
    device_id: str
    rule_id: str
    kind: IncidentKind
    condition: Condition
    metric: str
    threshold: float
    severity: str
    status: str
    opened_at: datetime
    last_breach_at: datetime
    peak_value: float
    breach_count: int
    acknowledged_by: str | None
    resolved_at: datetime | None


_COLUMNS = (
    "incident_id, device_id, rule_id, kind, condition, metric, threshold, severity, status, opened_at,"
    " last_breach_at, peak_value, breach_count, acknowledged_by, resolved_at"
)


def list_incidents(
    conn: psycopg.Connection[Any], *, open_only: bool = False, device_id: str | None = None, limit: int = 100
) -> list[IncidentRow]:
    """Newest first; ``open_only`` keeps firing and acknowledged ones."""
    with conn.cursor(row_factory=class_row(IncidentRow)) as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM incidents"
            " WHERE (NOT %(open)s OR status <> 'resolved')"
            " AND (%(device)s::text IS NULL OR device_id = %(device)s)"
            " ORDER BY opened_at DESC, incident_id LIMIT %(limit)s",
            {"open": open_only, "device": device_id, "limit": limit},
        )
        return cur.fetchall()


class AckError(LookupError):
    """An incident that cannot be acknowledged: unknown, or not firing."""


def acknowledge(conn: psycopg.Connection[Any], incident_id: str, *, by: str) -> IncidentRow:
    """Mark a firing incident acknowledged (acknowledging twice is fine; a resolved one is not)."""
    with conn.transaction(), conn.cursor(row_factory=class_row(IncidentRow)) as cur:
        cur.execute(
            "UPDATE incidents SET status = 'acknowledged', acknowledged_at = now(), acknowledged_by = %s,"
            f" updated_at = now() WHERE incident_id = %s AND status = 'firing' RETURNING {_COLUMNS}",
            (by, incident_id),
        )
        row = cur.fetchone()
        if row is not None:
            return row
        cur.execute(f"SELECT {_COLUMNS} FROM incidents WHERE incident_id = %s", (incident_id,))
        existing = cur.fetchone()
    if existing is None:
        raise AckError(f"no incident {incident_id!r}")
    if existing.status == "acknowledged":
        return existing
    raise AckError(f"incident {incident_id} is {existing.status}: only a firing incident can be acknowledged")
