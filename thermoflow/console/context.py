"""What the console's handlers share: the application's keys, the session and the page renderer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import jinja2
from aiohttp import web

from thermoflow.console.auth import Credentials, Session, Sessions
from thermoflow.console.deadletters import DeadLetterTail
from thermoflow.console.notified import NotifierState
from thermoflow.console.overview import Overview
from thermoflow.console.pool import Pool
from thermoflow.console.rules_view import RulesView
from thermoflow.console.settings import ConsoleSettings

HERE: Final = Path(__file__).parent

SETTINGS: Final = web.AppKey("settings", ConsoleSettings)
SESSIONS: Final = web.AppKey("sessions", Sessions)
CREDENTIALS: Final = web.AppKey("credentials", Credentials)
TEMPLATES: Final = web.AppKey("templates", jinja2.Environment)
POOL: Final = web.AppKey("pool", Pool)
OVERVIEW: Final = web.AppKey("overview", Overview)
DEADLETTERS: Final = web.AppKey("deadletters", DeadLetterTail)
RULES: Final = web.AppKey("rules", RulesView)
NOTIFIED: Final = web.AppKey("notified", NotifierState)
#: Set when the server begins to shut down: open event streams end, so the shutdown does not wait.
CLOSING: Final = web.AppKey("closing", asyncio.Event)
SESSION: Final = web.RequestKey("session", Session)
#: A POST's text fields (the console takes no file uploads).
FORM: Final = web.RequestKey[dict[str, str]]("form")


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
    )
    env.filters["datetime"] = utc_text
    return env


def utc_text(epoch: float) -> str:
    """Epoch seconds as UTC text for a page.

    >>> utc_text(0)
    '1970-01-01 00:00:00'
    """
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return str(epoch)  # a failed_at header out of range: shown as it came


def session_of(request: web.Request) -> Session:
    session: Session = request[SESSION]
    return session


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    """A page from ``template`` with the session's user and CSRF token."""
    session = session_of(request)
    flash, session.flash = session.flash, []
    html = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(user=session.user, csrf=session.csrf, flash=flash, path=request.path, **context)
    )
    return web.Response(text=html, status=status, content_type="text/html")


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", status=status, status_code=status, message=message)
