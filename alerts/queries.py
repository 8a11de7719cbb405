"""What operators ask of the incidents table: list them, acknowledge one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from thermoflow.events import ACK_BY_MAX, ACK_NOTE_MAX, Ack, Condition, IncidentKind, ack_text_problem


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
    acknowledged_at: datetime | None = None
    ack_note: str | None = None


_COLUMNS = (
    "incident_id, device_id, rule_id, kind, condition, metric, threshold, severity, status, opened_at,"
    " last_breach_at, peak_value, breach_count, acknowledged_by, resolved_at, acknowledged_at, ack_note"
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
    """An incident that cannot be acknowledged: unknown, or resolved."""


class InvalidAck(AckError):
    """An acknowledgement refused for what it says: who is empty, or the note too long or not plain text."""


def clean_ack_text(*, by: str, note: str) -> tuple[str, str]:
    """Who and the note as stored: trimmed, line ends as ``\\n``; refused (never silently altered
    further) when empty, too long or holding control characters (:func:`~thermoflow.events.ack_text_problem`).

    >>> clean_ack_text(by=" ana ", note="door open\\r\\nclosed it ")
    ('ana', 'door open\\nclosed it')
    >>> try:
    ...     clean_ack_text(by="ana", note="x" * 1001)
    ... except InvalidAck as exc:
    ...     print(exc)
    note is 1,001 characters long; at most 1,000 are allowed
    """
    by = by.strip()
    note = note.replace("\r\n", "\n").strip()
    if not by:
        raise InvalidAck("who acknowledges must be named (--by)")
    problem = ack_text_problem("by", by, max_chars=ACK_BY_MAX, multiline=False) or ack_text_problem(
        "note", note, max_chars=ACK_NOTE_MAX, multiline=True
    )
    if problem:
        raise InvalidAck(problem)
    return by, note


def ack_record(row: IncidentRow) -> Ack:
    """The :class:`~thermoflow.events.Ack` record that tells the notifier of an acknowledged incident row."""
    if row.acknowledged_at is None or row.acknowledged_by is None:
        raise ValueError(f"incident {row.incident_id} is not acknowledged")
    return Ack(
        incident_id=row.incident_id,
        device_id=row.device_id,
        rule_id=row.rule_id,
        incident_kind=row.kind,
        opened_at=row.opened_at.timestamp(),
        acknowledged_by=row.acknowledged_by,
        acknowledged_at=row.acknowledged_at.timestamp(),
        note=row.ack_note or "",
    )


def acknowledge(
    conn: psycopg.Connection[Any],
    incident_id: str,
    *,
    by: str,
    note: str = "",
    announce: Callable[[Ack], None] | None = None,
) -> IncidentRow:
    """Mark a firing incident acknowledged by ``by`` with ``note``; return its row.

    Idempotent: an incident acknowledged already comes back as it is (who, when and the note of
    the first acknowledgement), and nothing is announced. The row is locked first, so two
    acknowledgements at once (a double click) are one: the second waits for the first and finds
    it done. ``announce`` is called with the ack record inside the transaction, before it
    commits: if it raises (Kafka unreachable), nothing is stored and the caller may try again.

    Raises:
        InvalidAck: ``by`` empty, or ``note`` or ``by`` too long or holding control characters.
        AckError: no such incident, or it is resolved.
    """
    by, note = clean_ack_text(by=by, note=note)
    with conn.transaction(), conn.cursor(row_factory=class_row(IncidentRow)) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM incidents WHERE incident_id = %s FOR UPDATE", (incident_id,))
        existing = cur.fetchone()
        if existing is None:
            raise AckError(f"no incident {incident_id!r}")
        if existing.status == "acknowledged":
            return existing
        if existing.status != "firing":
            raise AckError(
                f"incident {incident_id} is {existing.status}: only a firing incident can be acknowledged"
            )
        cur.execute(
            "UPDATE incidents SET status = 'acknowledged', acknowledged_at = now(), acknowledged_by = %s,"
            f" ack_note = %s, updated_at = now() WHERE incident_id = %s RETURNING {_COLUMNS}",
            (by, note, incident_id),
        )
        row = cur.fetchone()
        assert row is not None  # locked above: it is still there
        if announce is not None:
            announce(ack_record(row))
        return row
