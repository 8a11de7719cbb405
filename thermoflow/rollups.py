"""The rollups' I/O: configured retention on TimescaleDB, and a device's history for `thermoflow readings`.

Migration ``050_rollups.sql`` creates the rollups with default retention (SQL files take no
parameters); :func:`apply_retention` replaces each retention policy with the configured one,
and `thermoflow init` runs it after the migrations. On plain PostgreSQL nothing drops rows, so
there is nothing to apply.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from thermoflow import db
from thermoflow.logs import get_logger
from thermoflow.readings_query import Plan
from thermoflow.readings_query import sql as history_sql
from thermoflow.settings import ThermoflowSettings

log = get_logger(__name__)


def retention_days(settings: ThermoflowSettings) -> dict[str, int]:
    """Days each hypertable or rollup keeps its rows, by relation name."""
    return {
        "readings": settings.readings_retention_days,
        "alert_events": settings.alert_events_retention_days,
        "readings_1m": settings.rollup_1m_retention_days,
        "readings_1h": settings.rollup_1h_retention_days,
        "alert_counts_1h": settings.rollup_1h_retention_days,
        "fleet_readings_1m": settings.rollup_1h_retention_days,
        "fleet_alerts_1m": settings.rollup_1h_retention_days,
    }


def current_retention(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The retention policies in the connection's schema: relation -> ``drop_after`` (TimescaleDB only)."""
    if db.timescaledb_schema(conn) is None:
        return {}
    rows = conn.execute(
        "SELECT hypertable_name, config->>'drop_after' FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_retention' AND hypertable_schema = current_schema()"
    ).fetchall()
    return {str(name): str(drop_after) for name, drop_after in rows}


def apply_retention(settings: ThermoflowSettings) -> dict[str, int]:
    """Set each retention policy to the configured days; returns what was set (empty on plain PostgreSQL).

    Idempotent: a policy that already has the configured interval is left alone, another one is
    replaced (remove, then add, in one transaction).
    """
    days = retention_days(settings)
    applied: dict[str, int] = {}
    with db.connect(settings) as conn, conn.transaction():
        schema = db.timescaledb_schema(conn)
        if schema is None:
            log.info("retention_not_applied", reason="no TimescaleDB: plain tables keep every row")
            return {}
        current = current_retention(conn)
        for relation, keep in days.items():
            if relation not in current:
                continue  # not a hypertable or continuous aggregate here (a plain fallback table)
            if current[relation] == f"{keep} days":
                continue
            conn.execute(
                sql.SQL("SELECT {}.remove_retention_policy(%s, if_exists => true)").format(
                    sql.Identifier(schema)
                ),
                (relation,),
            )
            conn.execute(
                sql.SQL("SELECT {}.add_retention_policy(%s, drop_after => make_interval(days => %s))").format(
                    sql.Identifier(schema)
                ),
                (relation, keep),
            )
            applied[relation] = keep
    if applied:
        log.info("retention_applied", schema=settings.database_schema, days=applied)
    return applied


def history(settings: ThermoflowSettings, plan: Plan, now: datetime | None = None) -> list[dict[str, Any]]:
    """A device's history as :mod:`thermoflow.readings_query` plans it: a dict per row, by metric and time."""
    query, params = history_sql(plan, now or datetime.now(UTC))
    with db.connect(settings) as conn, conn.cursor() as cur:
        cur.execute(query.encode(), params)
        columns = [c.name for c in cur.description or []]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
