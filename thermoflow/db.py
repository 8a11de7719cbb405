"""PostgreSQL helpers on psycopg 3: connections in the configured schema, and the migrations runner.

Migrations are plain SQL files in ``thermoflow/migrations/``, applied in name order, each in
its own transaction, and recorded in ``schema_migrations``; an advisory lock lets several
processes start at once. A migration that wants TimescaleDB checks for the extension itself
(``thermoflow_make_hypertable`` in ``005_timescaledb_schema.sql``), so the same schema runs on
plain PostgreSQL, and on a server that has TimescaleDB installed but not preloaded (the reason
is logged). The extension lives in ``public``, never in thermoflow's schema: :func:`drop_schema`
refuses a schema that holds an extension, since dropping it would drop every hypertable.

Writers share one error policy (:func:`classify`, :func:`retry_transient`,
:func:`write_isolating`): a database that is down or busy is waited for, forever, with
backoff; rows the database can never take are isolated by splitting the batch, and handed
back with the reason so the consumer can dead-letter them and commit the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, TypeVar

import psycopg
from psycopg import sql
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from thermoflow.logs import get_logger
from thermoflow.settings import ThermoflowSettings

log = get_logger(__name__)

_MIGRATION_LOCK = 0x7468_6572_6D6F  # "thermo": one lock id for every thermoflow process

T = TypeVar("T")


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
    """Apply the migrations not yet recorded in the configured schema; returns their versions.

    Also sizes ``alert_events``' future chunks to ``alert_events_chunk_days`` on TimescaleDB, each
    time, so a changed setting takes effect. Why TimescaleDB is not used, when it is not, is
    logged (``database_plain_tables``).
    """
    applied_now: list[str] = []
    notices: list[str] = []
    with connect(settings) as conn, conn.transaction():
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
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
        conn.execute(
            "SELECT thermoflow_set_chunk_interval('alert_events', make_interval(days => %s))",
            (settings.alert_events_chunk_days,),
        )
    if applied_now:
        log.info("migrations_applied", schema=settings.database_schema, versions=applied_now)
    for reason in dict.fromkeys(
        n.removeprefix("thermoflow: ") for n in notices if n.startswith("thermoflow: ")
    ):
        # Not installed is a plain PostgreSQL, as meant; installed and not preloaded is a mistake.
        report = log.warning if "not preloaded" in reason else log.info
        report("database_plain_tables", schema=settings.database_schema, reason=reason)
    return applied_now


def extensions_in(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The extensions whose objects live in ``schema`` (``pg_extension.extnamespace``)."""
    rows = conn.execute(
        "SELECT e.extname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE n.nspname = %s ORDER BY 1",
        (schema,),
    ).fetchall()
    return [str(row[0]) for row in rows]


class SchemaHoldsExtension(Exception):
    """A schema was not dropped because an extension lives in it."""


def drop_schema(dsn: str, schema: str) -> None:
    """``DROP SCHEMA ... CASCADE``, except for a schema that holds an extension.

    Dropping the schema that holds TimescaleDB drops the extension, and with it every hypertable's
    rows in every schema of the database: data loss far beyond the schema. Tests, the harness and
    tools drop their schemas through here. The schema's TimescaleDB jobs are stopped first
    (:func:`stop_jobs`).

    Raises:
        SchemaHoldsExtension: ``schema`` holds an extension; nothing was dropped.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not extensions_in(conn, schema):  # else refused below, with its jobs left as they were
            stop_jobs(conn, schema)
    for attempt in Retrying(
        retry=retry_if_exception_type(_BUSY), stop=stop_after_attempt(5), wait=wait_exponential(0.2, max=2.0),
        reraise=True,
    ):  # fmt: skip
        with attempt, psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
            # The migrations' lock: no `init` creates an extension between the check and the drop.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            held = extensions_in(conn, schema)
            if held:
                log.warning("schema_kept", schema=schema, extensions=held)
                raise SchemaHoldsExtension(
                    f"not dropping schema {schema!r}: it holds the extension(s) {', '.join(held)}, and"
                    " dropping them would drop their objects in every schema (for TimescaleDB: every"
                    " hypertable's rows)"
                )
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def timescaledb_schema(conn: psycopg.Connection[Any]) -> str | None:
    """The schema the TimescaleDB extension lives in; None where this database has no TimescaleDB."""
    row = conn.execute(
        "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    return None if row is None else str(row[0])


#: How long :func:`stop_jobs` waits for a schema's running TimescaleDB jobs to end.
JOBS_END_WITHIN_S: Final = 60.0
#: What ``stop_jobs`` asks of the server: the schema's jobs' workers (their backend type is the
#: job's name) and the jobs the scheduler still counts as running.
_RUNNING_JOBS: Final = (
    "SELECT count(*) FROM timescaledb_information.jobs j"
    " LEFT JOIN timescaledb_information.job_stats s USING (job_id)"
    " WHERE j.hypertable_schema = %(schema)s AND (s.job_status = 'Running'"
    " OR EXISTS (SELECT FROM pg_stat_activity a WHERE a.backend_type = j.application_name))"
)


def stop_jobs(conn: psycopg.Connection[Any], schema: str) -> None:
    """Unschedule the TimescaleDB jobs (rollup refreshes, compression, retention) on ``schema``'s
    objects and wait until none of them runs; nothing to do without TimescaleDB.

    Dropping a continuous aggregate while its refresh job runs crashes that job's worker
    (TimescaleDB 2.28, segfault), and PostgreSQL then restarts every connection of the server:
    seen in tests, which drop each schema a second after ``migrate`` made its jobs and the
    scheduler started them. ``conn`` must be in autocommit: the scheduler must see the change.
    A worker that starts just after the unscheduling is caught by a second look a moment later.
    """
    extension = timescaledb_schema(conn)
    if extension is None:
        return
    stopped = conn.execute(
        sql.SQL(
            "SELECT {}.alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
            " WHERE hypertable_schema = %s"
        ).format(sql.Identifier(extension)),
        (schema,),
    ).fetchall()
    if not stopped:
        return
    clear = 0
    deadline = time.monotonic() + JOBS_END_WITHIN_S
    while clear < 2 and time.monotonic() < deadline:
        running = conn.execute(_RUNNING_JOBS, {"schema": schema}).fetchone()
        clear = clear + 1 if running is not None and running[0] == 0 else 0
        time.sleep(0.05)
    if clear < 2:
        log.warning("jobs_still_running", schema=schema, waited_s=JOBS_END_WITHIN_S)


#: What a TimescaleDB background job (a rollup's refresh, a compression) working on a schema's
#: objects makes a concurrent ``DROP SCHEMA`` fail with: worth a moment's wait and another try.
_BUSY = (psycopg.errors.InternalError_, psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable)


async def migrate_when_available(settings: ThermoflowSettings, stop: asyncio.Event) -> bool:
    """Apply the migrations, waiting with backoff (:func:`retry_transient`) while the database is unreachable.

    Returns False when ``stop`` was set first: a consumer starting before its database is up
    waits for it instead of crash-looping.
    """

    def unavailable(exc: BaseException, delay: float) -> None:
        log.warning("database_unavailable", url=settings.database_url_redacted, error=str(exc).strip(),
                    retry_in=round(delay, 1))  # fmt: skip

    try:
        await retry_transient(
            lambda: asyncio.to_thread(migrate, settings),
            stop=stop,
            on_retry=unavailable,
            transient=lambda exc: isinstance(exc, psycopg.OperationalError),
            most=5.0,
        )
    except Stopped:
        return False
    return True


def timescaledb_available(conn: psycopg.Connection[Any]) -> bool:
    """Whether this server can turn tables into hypertables: the extension is there, or it is
    installed and preloaded (so ``CREATE EXTENSION`` would work). Installed alone is not enough.
    """
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
        " OR (EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"
        " AND EXISTS (SELECT 1 FROM pg_settings WHERE name = 'timescaledb.max_background_workers'))"
    ).fetchone()
    return bool(row and row[0])


def hypertables(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The tables of ``schema`` that are hypertables (none without TimescaleDB)."""
    if timescaledb_schema(conn) is None:
        return []
    rows = conn.execute(
        "SELECT hypertable_name FROM timescaledb_information.hypertables"
        " WHERE hypertable_schema = %s ORDER BY 1",
        (schema,),
    ).fetchall()
    return [str(row[0]) for row in rows]


# -- what the database can store ------------------------------------------------------------------

#: Epoch seconds of 0001-01-01 and 9999-12-31T23:59:59 UTC. ``to_timestamp`` takes a wider range,
#: but a row outside this one cannot be read back into a Python ``datetime`` (psycopg refuses it).
EPOCH_MIN: Final = -62_135_596_800.0
EPOCH_MAX: Final = 253_402_300_799.0
_INT8_MIN: Final = -(2**63)
_INT8_MAX: Final = 2**63 - 1


def unstorable_text(field: str, value: str) -> str | None:
    """Why ``value`` cannot be a text column (PostgreSQL text holds no NUL), or None if it can.

    >>> unstorable_text("device_id", "f\\x00-1")
    '`device_id` contains a NUL character, which PostgreSQL text cannot hold'
    """
    if "\x00" in value:
        return f"`{field}` contains a NUL character, which PostgreSQL text cannot hold"
    return None


def unstorable_epoch(field: str, value: float) -> str | None:
    """Why ``value`` (epoch seconds) cannot be a timestamptz column, or None if it can.

    >>> unstorable_epoch("ts", 1e19)
    '`ts` 1e+19 is outside the storable time range (years 1 to 9999)'
    """
    if not EPOCH_MIN <= value <= EPOCH_MAX:  # also NaN
        return f"`{field}` {value!r} is outside the storable time range (years 1 to 9999)"
    return None


def unstorable_int8(field: str, value: int | None) -> str | None:
    """Why ``value`` cannot be a bigint column, or None if it can.

    >>> unstorable_int8("seq", 2**63)
    '`seq` 9223372036854775808 is outside the 64-bit integer range'
    """
    if value is not None and not _INT8_MIN <= value <= _INT8_MAX:
        return f"`{field}` {value} is outside the 64-bit integer range"
    return None


# -- the error policy of every writer -------------------------------------------------------------


class Fault(enum.Enum):
    """What a failed write means for the rows it carried."""

    TRANSIENT = "transient"  # the database is down, restarting or busy: the same write works later
    CONFLICT = "conflict"  # a race with another writer (a unique key): worth a few more tries
    DATA = "data"  # some row can never be written: isolate it


#: SQLSTATE classes about the data itself: 22 data exception, 23 integrity constraint violation.
_DATA_CLASSES: Final = ("22", "23")
_UNIQUE_VIOLATION: Final = "23505"
#: How often a write that hit a unique-key race is tried before its rows count as bad data.
CONFLICT_ATTEMPTS: Final = 5


def classify(exc: BaseException) -> Fault | None:
    """The :class:`Fault` a write's exception stands for; None for one that is no database matter (a bug).

    A psycopg error outside the data classes (connection lost, server shutting down, a
    serialization failure or deadlock, even a missing column while someone migrates) is
    transient: the rows are fine, and dead-lettering them would lose good readings. A value
    psycopg cannot encode (an int beyond 64 bits, a lone surrogate) fails in Python before it
    reaches the server, as ``OverflowError`` or ``ValueError``: that is bad data too.

    >>> classify(psycopg.errors.DatetimeFieldOverflow()), classify(psycopg.errors.AdminShutdown())
    (<Fault.DATA: 'data'>, <Fault.TRANSIENT: 'transient'>)
    >>> classify(psycopg.errors.UniqueViolation()), classify(OverflowError()), classify(KeyError())
    (<Fault.CONFLICT: 'conflict'>, <Fault.DATA: 'data'>, None)
    """
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        if state == _UNIQUE_VIOLATION:
            return Fault.CONFLICT
        if state[:2] in _DATA_CLASSES or isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
            return Fault.DATA
        return Fault.TRANSIENT
    if isinstance(exc, ValueError | OverflowError | TypeError):  # UnicodeEncodeError is a ValueError
        return Fault.DATA
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same database write later can succeed."""
    return classify(exc) is Fault.TRANSIENT


class Stopped(Exception):
    """The component was asked to stop while it waited to retry: the work stays undone (and uncommitted)."""


def _should_retry(transient: Callable[[BaseException], bool]) -> Callable[[RetryCallState], bool]:
    def should_retry(state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is None:
            return False
        if transient(exc):
            return True
        return classify(exc) is Fault.CONFLICT and state.attempt_number < CONFLICT_ATTEMPTS

    return should_retry


async def retry_transient(
    attempt: Callable[[], Awaitable[T]],
    *,
    stop: asyncio.Event,
    on_retry: Callable[[BaseException, float], None],
    transient: Callable[[BaseException], bool] = is_transient,
    first: float = 0.5,
    most: float = 30.0,
) -> T:
    """Run ``attempt`` until it succeeds, retrying transient errors forever with jittered backoff.

    Any other error is raised at once (a unique-key conflict after :data:`CONFLICT_ATTEMPTS`).
    ``on_retry(error, delay)`` runs before each wait: log it, count it, tell the watchdog.

    Raises:
        Stopped: ``stop`` was set while the attempt failed or while waiting to retry.
    """
    # The first try runs without tenacity: its machinery (retry state, wait and stop policies,
    # a few coroutines) cost the sink an eighth of its event loop's work at a steady fleet's
    # rate, a batch at a time, for a try that nearly always succeeds. A first try that fails is
    # handed to tenacity as its own first attempt, so what follows is as before.
    try:
        return await attempt()
    except Exception as exc:  # noqa: BLE001 - handed to tenacity just below, which decides
        failed: Exception | None = exc

    async def wait(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if stop.is_set():
            raise Stopped

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        assert exc is not None  # only failed attempts are retried
        on_retry(exc, state.upcoming_sleep)

    retrying = AsyncRetrying(
        retry=_should_retry(transient),
        stop=lambda _: stop.is_set(),
        wait=wait_exponential(multiplier=first, max=most) + wait_random(0, first),
        sleep=wait,
        before_sleep=before_sleep,
        reraise=True,
    )

    async def call() -> T:  # a coroutine function: tenacity does not await a lambda's coroutine
        nonlocal failed
        if failed is not None:
            error, failed = failed, None
            raise error
        return await attempt()

    try:
        return await retrying(call)
    except BaseException as exc:
        if stop.is_set() and not isinstance(exc, Stopped) and transient(exc):
            raise Stopped from exc
        raise


async def write_isolating(
    items: Sequence[T],
    *,
    write: Callable[[Sequence[T]], Awaitable[int]],
    retry: Callable[[Callable[[], Awaitable[int]]], Awaitable[int]],
) -> tuple[int, list[tuple[int, str]]]:
    """Write ``items``; on a data error, split the batch in halves until the bad items stand alone.

    ``write`` stores a slice in one transaction and returns how many rows it added; ``retry``
    wraps each call in the transient-error policy (e.g. :func:`retry_transient`). One bad item
    among ``n`` costs about ``2·log2(n)`` extra writes; the good ones are written.

    Returns:
        The rows added, and ``(index in items, reason)`` for each item the database refused.
    """
    rejected: list[tuple[int, str]] = []

    async def attempt(start: int, stop: int) -> int:
        part = items[start:stop]
        try:
            return await retry(lambda: write(part))
        except Exception as exc:
            if classify(exc) not in (Fault.DATA, Fault.CONFLICT):
                raise
            if stop - start == 1:
                rejected.append((start, refusal(exc)))
                return 0
        middle = (start + stop) // 2
        return await attempt(start, middle) + await attempt(middle, stop)

    added = await attempt(0, len(items)) if items else 0
    return added, rejected


def refusal(exc: BaseException) -> str:
    """A dead letter's reason for a row the database refused: the error on one line.

    >>> refusal(OverflowError("int too big to convert"))
    'database refused it: OverflowError: int too big to convert'
    """
    text = " ".join(str(exc).split())
    if not isinstance(exc, psycopg.Error):
        text = f"{type(exc).__name__}: {text}"
    return f"database refused it: {text}"
