"""Real local receivers for the notifier's channels: an aiohttp web server and an aiosmtpd server."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import free_port


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    at: float


@dataclass
class WebhookReceiver:
    """POST /hook records each request; ``status`` is what it answers (503 = down)."""

    status: int = 200
    requests: list[Received] = field(default_factory=list)
    slack: list[Received] = field(default_factory=list)
    attempts: int = 0
    url: str = ""
    #: While set and not yet set free, each webhook request waits for it (a slow receiver).
    hold: asyncio.Event | None = None
    _runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.hold is not None:
            await self.hold.wait()
        if self.status >= 300:
            return web.Response(status=self.status, text="down for maintenance")
        self.requests.append(Received(body=body, headers=dict(request.headers), at=time.time()))
        return web.Response(status=200, text="ok")

    async def _slack(self, request: web.Request) -> web.Response:
        self.slack.append(Received(body=await request.read(), headers=dict(request.headers), at=time.time()))
        return web.Response(status=200, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/slack", self._slack)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def keys(self) -> list[str]:
        return [r.headers["Idempotency-Key"] for r in self.requests]


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (it is its own CA), made with the openssl CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class MailSink:
    """An SMTP server requiring STARTTLS and login; keeps the messages it accepts."""

    def __init__(self, *, cert: Path, key: Path, username: str, password: str) -> None:
        self.messages: list[Message] = []
        self.logins: list[str] = []
        self._lock = threading.Lock()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.port = free_port()

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                username.encode(),
                password.encode(),
            )
            if ok:
                self.logins.append(username)
            return AuthResult(success=ok)

        self.controller = Controller(
            self, hostname="127.0.0.1", port=self.port, tls_context=context, require_starttls=True,
            authenticator=authenticate, auth_required=True,
        )  # fmt: skip

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
