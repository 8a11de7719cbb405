"""The console's aiohttp application: sessions, the login, CSRF, errors, and the parts it runs.

- Every visitor gets a session cookie (HttpOnly, SameSite=Strict; Secure behind HTTPS) with a
  CSRF token of its own; every POST must carry that token back, else 403.
- Pages are read without a login only when ``read_open`` (loopback by default); writes
  (acknowledge, redrive) always need an operator login.
- A bad parameter is a 400 with the reason (:class:`~thermoflow.console.params.ParamError`).
- Templates autoescape everything: device ids, payloads and reasons come from devices.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final
from urllib.parse import quote

import psycopg
from aiohttp import web

from thermoflow.console import pages
from thermoflow.console.auth import USER_NAME, Credentials, Session, Sessions, load_users
from thermoflow.console.context import (
    CLOSING,
    CREDENTIALS,
    DEADLETTERS,
    FORM,
    HERE,
    NOTIFIED,
    OVERVIEW,
    POOL,
    RULES,
    SESSION,
    SESSIONS,
    SETTINGS,
    TEMPLATES,
    error_page,
    render,
    session_of,
    templates,
)
from thermoflow.console.deadletters import DeadLetterTail
from thermoflow.console.notified import NotifierState
from thermoflow.console.overview import Overview
from thermoflow.console.params import ParamError
from thermoflow.console.pool import Pool
from thermoflow.console.rules_view import RulesView
from thermoflow.console.settings import ConsoleSettings
from thermoflow.logs import get_logger
from thermoflow.rules import DEFAULT_RULES_FILE

log = get_logger(__name__)

COOKIE: Final = "thermoflow_console"
#: Reachable without a login even when reading is closed.
PUBLIC: Final = ("/login", "/static/", "/healthz")
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
    " connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session, read access, CSRF and error pages, in that order."""
    app = request.app
    sessions = app[SESSIONS]
    session = sessions.get(request.cookies.get(COOKIE))
    fresh = session is None
    if session is None:
        session = sessions.new()
    request[SESSION] = session
    try:
        response = await _checked(request, handler, session)
    except ParamError as exc:
        response = error_page(request, 400, str(exc))
    except web.HTTPException as exc:
        if exc.status >= 400:
            response = error_page(request, exc.status, exc.text or exc.reason)
        else:  # a redirect: as a response, so that a login's new cookie goes with it
            location = exc.headers.get("Location")
            response = web.Response(status=exc.status, headers={"Location": location} if location else None)
    except psycopg.OperationalError as exc:
        log.warning("console_database_unreachable", path=request.path, error=str(exc)[:300])
        response = error_page(request, 503, "the database cannot be reached right now; try again shortly")
    except Exception:  # a bug: logged whole, the page says only that it happened
        log.exception("console_error", path=request.path)
        response = error_page(request, 500, "internal error: the console's log has the details")
    current = session_of(request)  # a login swaps the session
    if fresh or current is not session:
        response.set_cookie(
            COOKIE, current.session_id, httponly=True, samesite="Strict", secure=request.secure, path="/",
            max_age=round(app[SETTINGS].console_session_hours * 3600),
        )  # fmt: skip
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


async def _checked(request: web.Request, handler: Handler, session: Session) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    public = request.path.startswith(PUBLIC)
    if request.method == "POST":
        form = await request.post()
        token = form.get("csrf")
        if not session.csrf_ok(token if isinstance(token, str) else None):
            log.warning("console_csrf_refused", path=request.path, user=session.user)
            raise web.HTTPForbidden(
                text="the form's CSRF token is missing or wrong: reload the page and try again"
            )
        request[FORM] = {name: value for name, value in form.items() if isinstance(value, str)}
        if session.user is None and not public:
            raise web.HTTPUnauthorized(text="log in as an operator to do this")
    elif session.user is None and not public and not settings.read_open:
        if request.path.startswith("/overview/"):
            raise web.HTTPUnauthorized(text="log in to read the console")
        raise web.HTTPFound(f"/login?next={quote(request.path_qs, safe='')}")
    return await handler(request)


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this site only (never ``//evil`` or ``https://...``).

    >>> safe_next("/incidents?status=open"), safe_next("//evil.example/"), safe_next("https://x")
    ('/incidents?status=open', '/', '/')
    """
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def login_page(request: web.Request) -> web.StreamResponse:
    credentials = request.app[CREDENTIALS]
    return render(request, "login.html", next=safe_next(request.query.get("next")), can_login=credentials.any)


async def login(request: web.Request) -> web.StreamResponse:
    form = request[FORM]
    name, password = str(form.get("user", "")), str(form.get("password", ""))
    user = request.app[CREDENTIALS].check(name, password)
    if user is None:
        log.warning("console_login_refused", user=name[:64] if USER_NAME.match(name) else "(invalid name)")
        return render(
            request, "login.html", status=401, next=safe_next(str(form.get("next", ""))),
            can_login=request.app[CREDENTIALS].any, error="wrong name or password",
        )  # fmt: skip
    request[SESSION] = request.app[SESSIONS].login(session_of(request), user)
    log.info("console_login", user=user)
    raise web.HTTPSeeOther(safe_next(str(form.get("next", ""))))


async def logout(request: web.Request) -> web.StreamResponse:
    sessions = request.app[SESSIONS]
    sessions.logout(session_of(request))
    request[SESSION] = sessions.new()
    raise web.HTTPSeeOther("/")


async def healthz(_: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True})


def create_app(settings: ConsoleSettings, *, background: bool = True) -> web.Application:
    """The console; ``background`` starts the overview sampler and the dead-letter tail with it."""
    app = web.Application(middlewares=[security], client_max_size=256 << 10)
    app[SETTINGS] = settings
    app[SESSIONS] = Sessions(lifetime=settings.console_session_hours * 3600)
    token = settings.console_token.get_secret_value() if settings.console_token else None
    app[CREDENTIALS] = Credentials(users=load_users(settings.console_users_file), token=token)
    app[TEMPLATES] = templates()
    app[RULES] = RulesView(settings.console_rules_file or DEFAULT_RULES_FILE)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", HERE / "static", append_version=True)
    pages.add_routes(app.router)

    async def parts(app: web.Application) -> AsyncIterator[None]:
        pool = app[POOL] = Pool(settings)
        tail = app[DEADLETTERS] = DeadLetterTail(settings, keep=settings.console_deadletters)
        overview = app[OVERVIEW] = Overview(settings, pool)
        notified = app[NOTIFIED] = NotifierState(settings, settings.notifier_state_topic)
        if background:
            tail.start()
            overview.start()
            notified.start()
        try:
            yield
        finally:
            await notified.stop()
            await overview.stop()
            await tail.stop()
            with contextlib.suppress(Exception):
                pool.close()

    app[CLOSING] = asyncio.Event()

    async def closing(app: web.Application) -> None:
        app[CLOSING].set()

    app.on_shutdown.append(closing)
    app.cleanup_ctx.append(parts)
    return app


@contextlib.asynccontextmanager
async def serving(settings: ConsoleSettings, *, background: bool = True) -> AsyncIterator[str]:
    """Serve the console on the settings' host and port inside a running loop; yields its URL.

    For `thermoflow demo` and tests: with ``console_port`` 0 the URL has the port the system chose.
    The database's migrations must have been applied (`thermoflow init` or :func:`thermoflow.db.migrate`).
    """
    runner = web.AppRunner(create_app(settings, background=background), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.console_host, settings.console_port)
        await site.start()
        port = int(runner.addresses[0][1]) if runner.addresses else settings.console_port
        host = f"[{settings.console_host}]" if ":" in settings.console_host else settings.console_host
        yield f"http://{host}:{port}/"
    finally:
        await runner.cleanup()
