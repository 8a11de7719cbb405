"""PostgreSQL helpers on psycopg 3: connections in the configured schema, and the migrations runner.

Migrations are plain SQL files in ``thermoflow/migrations/``, applied in name order, each in
its own transaction, and recorded in ``schema_migrations``; an advisory lock lets several
processes start at once. A migration that wants TimescaleDB checks for the extension itself
(see ``010_readings.sql``), so the same schema runs on plain PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from thermoflow.logs import get_logger
from thermoflow.settings import ThermoflowSettings

log = get_logger(__name__)

_MIGRATION_LOCK = 0x7468_6572_6D6F  # "thermo": one lock id for every thermoflow process


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str


def connect(settings: ThermoflowSettings, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection whose search_path is the configured schema (created if missing)."""
    conn = psycopg.connect(settings.database_dsn, **kwargs)
    _use_schema(conn, settings.database_schema)
    return conn


async def connect_async(settings: ThermoflowSettings, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """The asyncio twin of :func:`connect`."""
    conn = await psycopg.AsyncConnection.connect(settings.database_dsn, **kwargs)
    schema = sql.Identifier(settings.database_schema)
    async with conn.cursor() as cur:
        await cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        await cur.execute(sql.SQL("SET search_path TO {}, public").format(schema))
    await conn.commit()
    return conn


def _use_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema)))
    conn.commit()


def available_migrations() -> list[Migration]:
    """The migration files shipped with thermoflow, in the order they apply."""
    folder = resources.files("thermoflow") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [Migration(version=f.name.removesuffix(".sql"), sql=f.read_text()) for f in files]


def migrate(settings: ThermoflowSettings) -> list[str]:
    """Apply the migrations not yet recorded in the configured schema; returns their versions."""
    applied_now: list[str] = []
    with connect(settings) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for migration in available_migrations():
            if migration.version in done:
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,))
            applied_now.append(migration.version)
    if applied_now:
        log.info("migrations_applied", schema=settings.database_schema, versions=applied_now)
    return applied_now


async def migrate_when_available(settings: ThermoflowSettings, stop: asyncio.Event) -> bool:
    """Apply the migrations, waiting with backoff while the database is unreachable.

    Returns False when ``stop`` was set first: a consumer starting before its database is up
    waits for it instead of crash-looping.
    """
    delay = 0.5
    while not stop.is_set():
        try:
            await asyncio.to_thread(migrate, settings)
            return True
        except psycopg.OperationalError as exc:
            log.warning("database_unavailable", url=settings.database_url_redacted, error=str(exc).strip(),
                        retry_in=delay)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)
    return False


def timescaledb_available(conn: psycopg.Connection[Any]) -> bool:
    """Whether this server can turn tables into hypertables."""
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    return row is not None
