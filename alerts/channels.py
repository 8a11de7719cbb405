"""Notification channels: log (JSON lines), generic webhook, Slack incoming webhook, SMTP email.

Each is a :class:`Channel`: ``send`` delivers one notification or raises :class:`DeliveryError`
saying whether trying again may help. Retries and the circuit breaker live in
:mod:`thermoflow.alerts.delivery`, not here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
import ssl
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol, TextIO

import aiohttp
import msgspec

from thermoflow import tracing
from thermoflow.alerts.notification import Notification, details, headline, to_json

SIGNATURE_HEADER = "X-Thermoflow-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"

_RETRYABLE_STATUS = {408, 425, 429}


class DeliveryError(Exception):
    """A send that failed; ``retryable`` says whether the same send may succeed later."""

    def __init__(self, reason: str, *, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class Channel(Protocol):
    """Where notifications go."""

    name: str

    async def send(self, notification: Notification) -> None: ...

    async def close(self) -> None: ...


def sign(body: bytes, secret: str) -> str:
    """The signature header value: ``sha256=`` and the hex HMAC-SHA256 of the body.

    >>> sign(b'{}', "s3cret")
    'sha256=adbde1ce40c89c14215687d5d762a47df6dfaefcfad61e2e86718ffc8498571b'
    """
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, signature: str) -> bool:
    """What a receiver does: recompute the signature and compare in constant time."""
    return hmac.compare_digest(sign(body, secret), signature)


class LogChannel:
    """One JSON line per notification, to stdout or appended to a file."""

    def __init__(self, name: str, *, path: Path | None = None) -> None:
        self.name = name
        self._file: TextIO | None = path.open("a", encoding="utf-8") if path else None

    async def send(self, notification: Notification) -> None:
        stream = self._file or sys.stdout
        try:
            stream.write(to_json(notification).decode() + "\n")
            stream.flush()
        except OSError as exc:
            raise DeliveryError(f"cannot write the log: {exc}") from exc

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _HttpChannel:
    """POSTs with one shared aiohttp session (created in the running loop on first use)."""

    def __init__(self, name: str, *, url: str, timeout: float) -> None:
        self.name = name
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=256)
            )
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                if response.status < 300:
                    return
                text = (await response.text())[:200]
                retryable = response.status >= 500 or response.status in _RETRYABLE_STATUS
                raise DeliveryError(f"HTTP {response.status}: {text}", retryable=retryable)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class WebhookChannel(_HttpChannel):
    """POST the notification as JSON, signed with HMAC-SHA256, with an idempotency key, and the
    W3C ``traceparent`` of the alert behind it (when it has one): the receiver's own trace can
    continue the pipeline's."""

    def __init__(self, name: str, *, url: str, secret: str, timeout: float = 10.0) -> None:
        super().__init__(name, url=url, timeout=timeout)
        self._secret = secret

    async def send(self, notification: Notification) -> None:
        body = to_json(notification)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, self._secret),
            IDEMPOTENCY_HEADER: notification.idempotency_key,
        }
        traceparent = tracing.current.get()
        if traceparent is not None:
            headers[tracing.HEADER] = traceparent.decode("ascii", "replace")
        await self._post(body, headers)


def slack_message(notification: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook payload a person can read at a glance."""
    emoji = _SLACK_EMOJI.get(notification.transition, ":rotating_light:")
    text = f"*{headline(notification)}*\n{details(notification)}".translate(_SLACK_ESCAPES)
    return {"text": f"{emoji} {text}"}


_SLACK_EMOJI = {"resolve": ":white_check_mark:", "acknowledged": ":eyes:"}
# Slack reads <...> as links and mentions (<!channel> pings everyone): a note or a device id
# must show as typed, so the three characters Slack's docs name are escaped.
_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


class SlackChannel(_HttpChannel):
    """A Slack incoming webhook: a readable message, no machine fields."""

    async def send(self, notification: Notification) -> None:
        body = msgspec.json.encode(slack_message(notification))
        await self._post(body, {"Content-Type": "application/json"})


class EmailChannel:
    """Email over SMTP (optional implicit TLS or STARTTLS, optional login), in a worker thread."""

    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        sender: str,
        recipients: list[str],
        starttls: bool = True,
        use_ssl: bool = False,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.name = name
        self._host, self._port = host, port
        self._sender, self._recipients = sender, recipients
        self._starttls, self._ssl = starttls, use_ssl
        self._username, self._password = username, password
        self._ca_file = ca_file
        self._timeout = timeout

    def message(self, notification: Notification) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = headline(notification)
        message["From"] = self._sender
        message["To"] = ", ".join(self._recipients)
        message["Message-ID"] = f"<{notification.idempotency_key}@thermoflow>"
        message[IDEMPOTENCY_HEADER] = notification.idempotency_key
        message.set_content(details(notification) + "\n")
        return message

    def _send_blocking(self, message: EmailMessage) -> None:
        context = ssl.create_default_context(cafile=self._ca_file)
        smtp: smtplib.SMTP
        if self._ssl:
            smtp = smtplib.SMTP_SSL(self._host, self._port, timeout=self._timeout, context=context)
        else:
            smtp = smtplib.SMTP(self._host, self._port, timeout=self._timeout)
        with smtp:
            if self._starttls and not self._ssl:
                smtp.starttls(context=context)
            if self._username:
                smtp.login(self._username, self._password or "")
            smtp.send_message(message)

    async def send(self, notification: Notification) -> None:
        try:
            await asyncio.to_thread(self._send_blocking, self.message(notification))
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP login refused: {exc.smtp_code}", retryable=False) from exc
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", retryable=exc.smtp_code < 500
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        return None
