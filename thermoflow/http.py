"""``/metrics``, ``/healthz`` and ``/readyz`` of a running component, on ``THERMOFLOW_HTTP_PORT``.

- ``/metrics``: the component's :class:`~thermoflow.metrics.Metrics` registry, in Prometheus'
  text exposition format.
- ``/healthz``: the process loop is alive. The server runs on the component's own event loop,
  so a blocked loop does not answer at all; a loop that answers but whose
  :class:`~thermoflow.watchdog.Watchdog` sees a stall answers 503. Restart on failure.
- ``/readyz``: connected to what the component needs (broker, Kafka, database) and caught up
  where that matters, each a named check the component registers. 503 names the checks that
  fail. Send no work (and do not scale in) until it answers 200.

Both answer JSON: ``{"ok": true, "checks": {"kafka": true, ...}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.settings import ConfigError, ThermoflowSettings
from thermoflow.watchdog import Watchdog

log = get_logger(__name__)

#: The default port; `thermoflow run` gives instance *i* of its plan ``port + i``.
DEFAULT_HTTP_PORT: Final = 9108

#: Seconds between two runs of the background probes, and the most one may take.
PROBE_EVERY: Final = 5.0
PROBE_TIMEOUT: Final = 3.0

Check = Callable[[], bool]
Probe = Callable[[], Awaitable[bool]]


async def tcp_reachable(address: str) -> bool:
    """Whether ``host:port`` accepts a TCP connection: a cheap look at a broker or database.

    ``address`` may list several, comma-separated (Kafka's bootstrap): one answering is enough.
    """
    for one in address.split(","):
        host, _, port = one.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), PROBE_TIMEOUT
            )
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


class Health:
    """What ``/healthz`` and ``/readyz`` answer: a watchdog for liveness, named checks for readiness.

    >>> health = Health()
    >>> health.ready_when("kafka", lambda: False)
    >>> health.live(), health.ready()
    ((True, {'loop': True}), (False, {'kafka': False}))
    """

    def __init__(self, watchdog: Watchdog | None = None) -> None:
        self.watchdog = watchdog
        self._checks: dict[str, Check] = {}
        self._probes: dict[str, Probe] = {}
        self._probed: dict[str, bool] = {}

    def ready_when(self, name: str, check: Check) -> None:
        """Ready only while ``check()`` is true (called per request: keep it a cheap look at state)."""
        self._checks[name] = check

    def probe(self, name: str, probe: Probe) -> None:
        """Ready only while ``await probe()`` last said true; :func:`serve` runs it every few seconds."""
        self._probes[name] = probe
        self._probed[name] = False  # not ready until the first probe answered

    async def run_probes(self) -> None:
        """Run every probe once, each within :data:`PROBE_TIMEOUT`, and keep what they said."""
        names = list(self._probes)
        results = await asyncio.gather(
            *(asyncio.wait_for(self._probes[name](), PROBE_TIMEOUT) for name in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            self._probed[name] = result is True

    async def keep_probing(self, every: float = PROBE_EVERY) -> None:
        while True:
            await self.run_probes()
            await asyncio.sleep(every)

    def live(self) -> tuple[bool, dict[str, bool]]:
        checks = {"loop": True}  # answering at all means the loop runs
        if self.watchdog is not None:
            checks["progress"] = self.watchdog.stalled_for() is None
        return all(checks.values()), checks

    def ready(self) -> tuple[bool, dict[str, bool]]:
        checks = dict(self._probed)
        for name, check in self._checks.items():
            try:
                checks[name] = bool(check())
            except Exception:  # a check that fails to look is a check that fails
                log.exception("readiness_check_failed", check=name)
                checks[name] = False
        return all(checks.values()), checks


def _answer(result: tuple[bool, dict[str, bool]]) -> web.Response:
    ok, checks = result
    return web.Response(
        status=200 if ok else 503,
        text=json.dumps({"ok": ok, "checks": checks}),
        content_type="application/json",
    )


def build_app(metrics: Metrics, health: Health) -> web.Application:
    """The three routes (a function of its own so tests can serve it on any port)."""

    async def scrape(_request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return _answer(health.live())

    async def readyz(_request: web.Request) -> web.Response:
        return _answer(health.ready())

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@contextlib.asynccontextmanager
async def serve(
    port: int | None, metrics: Metrics, health: Health, *, host: str = "0.0.0.0"
) -> AsyncIterator[int | None]:
    """Serve the endpoints on ``port`` (None or 0: not at all) while the block runs; yields the port.

    A port that cannot be bound (in use, privileged) stops the component at once with a
    :class:`~thermoflow.settings.ConfigError` naming it, rather than running unobservable.
    """
    if not port:
        yield None
        return
    runner = web.AppRunner(build_app(metrics, health), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(
                f"THERMOFLOW_HTTP_PORT={port}: cannot serve /metrics there ({exc.strerror or exc});"
                " choose another port, or 0 to serve none"
            ) from None
        log.info("http_serving", port=port, paths=["/metrics", "/healthz", "/readyz"])
        probing = asyncio.create_task(health.keep_probing(), name="readiness-probes")
        try:
            yield port
        finally:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
    finally:
        await runner.cleanup()


def database_address(settings: ThermoflowSettings) -> str:
    """``host:port`` of the database URL (5432 when it names none)."""
    url = urlsplit(settings.database_dsn)
    return f"{url.hostname or 'localhost'}:{url.port or 5432}"


def component_health(
    settings: ThermoflowSettings, watchdog: Watchdog | None, *, kafka: bool = True, database: bool = False
) -> Health:
    """The usual health of a pipeline component: its watchdog, and Kafka (and the database) reachable."""
    health = Health(watchdog)
    if kafka:
        health.probe("kafka", lambda: tcp_reachable(settings.kafka_bootstrap))
    if database:
        address = database_address(settings)
        health.probe("database", lambda: tcp_reachable(address))
    return health
