"""A small local webhook receiver: the demo shows what it gets, the end-to-end test counts it."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Delivery:
    received_at: float
    headers: dict[str, str]
    body: bytes
    json: Any


@dataclass
class WebhookReceiver:
    """Accepts POSTs on ``/hook`` on 127.0.0.1; ``failing`` makes it answer 503 (a channel outage)."""

    host: str = "127.0.0.1"
    port: int = 0
    failing: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if self.failing:
            return web.Response(status=503, text="unavailable")
        body = await request.read()
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        self.deliveries.append(Delivery(time.time(), dict(request.headers), body, payload))
        return web.Response(status=200, text="ok")


def signature_valid(*, body: bytes, secret: str, signature: str) -> bool:
    """Check an HMAC-SHA256 signature header (``sha256=<hex>`` or bare hex) over ``body``."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature.removeprefix("sha256="), expected)
