"""The bridge's MQTT side: one persistent session (QoS 1, manual acks), kept up with backoff.

The client is :class:`~thermoflow.ingest.mqtt_reader.BulkReadClient` running on the asyncio
loop (:class:`~thermoflow.ingest.mqtt_reader.PahoOnAsyncio`); only paho's connect, a blocking
socket connect, runs in a worker thread. The session is persistent (MQTT 5 ``clean_start=False``
with a session expiry, MQTT 3.1.1 ``clean_session=False``), so a lost connection loses nothing:
the broker redelivers every unacked QoS 1 message after the reconnect. ``on_lost`` runs when
the connection goes, before the reconnect, for the caller to drop what it holds unacked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from thermoflow import mqtt
from thermoflow.ingest.delivery import backoff
from thermoflow.ingest.mqtt_reader import BulkReadClient, PahoOnAsyncio, PublishHandler
from thermoflow.ingest.settings import IngestSettings
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.watchdog import Watchdog

log = get_logger(__name__)


class MqttSession:
    """``open()``, then ``await keep_connected(stop)``; ``io`` pauses and resumes the reading."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        on_publish: PublishHandler,
        room: Callable[[], int],
        may_read: Callable[[], bool],
        rest: Callable[[], bool] = lambda: False,
        on_lost: Callable[[str], None],
        metrics: Metrics,
        watchdog: Watchdog,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.watchdog = watchdog
        self.io = PahoOnAsyncio(may_read=may_read, rest=rest)
        self.connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._on_publish = on_publish
        self._room = room
        self._on_lost = on_lost
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        """Make the client and run it on the running loop (not connected yet)."""
        self._loop = asyncio.get_running_loop()
        settings = self.settings
        client = mqtt.client(
            settings,
            client_id=settings.mqtt_client_id,
            version=settings.mqtt_version,
            clean=False,
            manual_ack=True,
            cls=BulkReadClient,
            on_publish=self._on_publish,
            room=self._room,
        )
        assert isinstance(client, BulkReadClient)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        self.io.attach(client)

    def keepalive(self) -> None:
        """paho's keepalive pings (call about once a second)."""
        if self.io.client is not None and self.io.sock is not None:
            self.io.client.loop_misc()

    async def disconnect(self, by: float) -> None:
        """Write what paho has queued (the last acks) and a DISCONNECT, giving up at ``by``."""
        client = self.io.client
        if client is not None and self.connected.is_set():
            while client.want_write() and time.monotonic() < by:
                client.loop_write()
                await asyncio.sleep(0.001)
            client.disconnect()
            while client.want_write() and time.monotonic() < by:
                client.loop_write()
                await asyncio.sleep(0.001)

    def _connect_blocking(self) -> None:
        """paho's connect (a blocking socket connect): run in a worker thread."""
        client = self.io.client
        assert client is not None
        settings = self.settings
        if settings.mqtt_version == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.mqtt_session_expiry
            properties.ReceiveMaximum = settings.mqtt_receive_maximum
            client.connect(
                settings.mqtt_host,
                settings.mqtt_port,
                keepalive=settings.mqtt_keepalive,
                clean_start=False,
                properties=properties,
            )
        else:
            client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=settings.mqtt_keepalive)

    async def keep_connected(self, stop: asyncio.Event) -> None:
        """Connect, and reconnect with backoff whenever the connection is lost."""
        attempt = 0
        while not stop.is_set():
            self._lost.clear()
            try:
                await asyncio.to_thread(self._connect_blocking)
            except (OSError, ValueError) as exc:
                delay = backoff(attempt)
                attempt += 1
                self.metrics.count("mqtt_connect_failures")
                self.watchdog.retrying("mqtt unreachable")
                log.warning(
                    "mqtt_connect_failed",
                    url=self.settings.mqtt_url,
                    error=str(exc),
                    retry_in=round(delay, 1),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            await self._lost.wait()
            if self.connected.is_set():
                attempt = 0
            else:
                attempt += 1
            self.connected.clear()
            if not stop.is_set():
                delay = backoff(attempt)
                log.warning("mqtt_connection_lost", retry_in=round(delay, 1))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    def _on_connect(
        self, client: paho.Client, _userdata: Any, flags: Any, reason: Any, _properties: Any
    ) -> None:
        if reason.is_failure:
            log.error("mqtt_connect_refused", reason=str(reason))
            client.disconnect()
            return
        self.connected.set()
        self.metrics.count("mqtt_connects")
        log.info(
            "mqtt_connected",
            url=self.settings.mqtt_url,
            client_id=self.settings.mqtt_client_id,
            session_present=bool(flags.session_present),
        )
        # Subscribing again is harmless when the session kept the subscriptions, and needed when not.
        client.subscribe([(topic_filter, 1) for topic_filter in self.settings.topic_filters])

    def _on_subscribe(
        self, _client: paho.Client, _userdata: Any, _mid: int, reasons: Any, _properties: Any
    ) -> None:
        granted = [str(reason) for reason in reasons]
        if any(reason.is_failure for reason in reasons):
            log.error("mqtt_subscribe_refused", filters=self.settings.topic_filters, reasons=granted)
        else:
            log.info("mqtt_subscribed", filters=self.settings.topic_filters, granted=granted)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _properties: Any
    ) -> None:
        self._on_lost(str(reason))
        self.io.reading = False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._lost.set)
