"""A few reused database connections, used from worker threads.

The console's queries are short and its writes reuse the alert store's synchronous functions
(:func:`thermoflow.alerts.queries.acknowledge`), so each request borrows a connection in a
thread (``asyncio.to_thread``) instead of opening one: connecting costs more than a page's query.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from thermoflow import db
from thermoflow.settings import ThermoflowSettings

T = TypeVar("T")


class Pool:
    """At most ``size`` connections (autocommit; a write opens its own transaction)."""

    def __init__(self, settings: ThermoflowSettings, *, size: int = 4) -> None:
        self._settings = settings
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = asyncio.Semaphore(size)

    async def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work(conn)`` in a thread on a pooled connection; a broken connection is dropped."""
        async with self._slots:
            return await asyncio.to_thread(self._run, work)

    def _run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = db.connect(self._settings, autocommit=True)
        try:
            result = work(conn)
        except BaseException:
            if conn.broken or conn.closed:
                conn.close()
            else:
                self._idle.put(conn)
            raise
        self._idle.put(conn)
        return result

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
