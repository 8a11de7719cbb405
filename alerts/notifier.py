"""`thermoflow alerts notify`: telemetry.alerts -> incident transitions -> channels.

The loop: fetch a batch of ``telemetry.alerts`` records and fold them, in order, into the
:class:`IncidentTracker` (pure): alert events open, extend and escalate incidents; clears end
offline and ingest_silent incidents (data came back); the processors' watermark records move
each partition's pipeline watermark (:class:`~thermoflow.alerts.watermarks.PipelineWatermarks`),
which resolves the quiet incidents it has passed. Then tick it (repeats, on the wall clock),
deliver the notifications (every channel concurrently, retried, breaker-guarded, dead-lettered
when undeliverable), persist the changed incident states to the compacted state topic, then
commit the batch's offsets
(:class:`thermoflow.consume.ConsumeLoop`: the next batch is fetched and dispatched while this
one's states are written; after a rebalance no batch is handled before the state is reloaded). A
:class:`~thermoflow.watchdog.Watchdog` ends the process (for a restart) if fetched records
stay uncommitted for ``stall_timeout``. Killed anywhere, it
restarts from the last committed offsets with the state of the last persisted batch, so an
already-notified transition is not notified again (a crash between a send and the state write
re-sends it with the same idempotency key: at-least-once, de-duplicable by the receiver).

Beside the loop, :class:`~thermoflow.alerts.pipeline_watch.PipelineWatch` raises the pipeline's own
incidents (dead-letter rate, consumer lag, open breakers) on the alerts topic, device ``pipeline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from thermoflow import consume, kafka, tracing
from thermoflow.alerts.channels import Channel, EmailChannel, LogChannel, SlackChannel, WebhookChannel
from thermoflow.alerts.delivery import Dispatcher, RetryPolicy
from thermoflow.alerts.kafka_io import (
    KafkaDeadLetters,
    caught_up,
    decode_batch,
    ensure_state_topic,
    load_states,
    write_states,
)
from thermoflow.alerts.lifecycle import Incident, Policy
from thermoflow.alerts.pipeline_watch import PipelineWatch
from thermoflow.alerts.routing import (
    EmailRoute,
    LogRoute,
    Routes,
    SlackRoute,
    WebhookRoute,
    env_secret,
    parse_routes,
    with_env_channels,
)
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.alerts.tracker import IncidentTracker
from thermoflow.alerts.watermarks import PipelineWatermarks
from thermoflow.events import PIPELINE_DEVICE, Ack, AlertEvent, Clear, Condition, incident_kind
from thermoflow.http import component_health, serve
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.settings import ConfigError
from thermoflow.watchdog import Watchdog

log = get_logger(__name__)


def load_routes(settings: AlertsSettings) -> Routes:
    """The routing file (if any) plus the channels configured by plain settings."""
    routes = Routes()
    if settings.notify_routes is not None:
        path = settings.notify_routes
        routes = parse_routes(path.read_text(encoding="utf-8"), source=str(path))
    routes = with_env_channels(
        routes,
        log=settings.notify_log,
        webhook_url=settings.webhook_url,
        webhook_secret=settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
        slack_url=settings.slack_webhook_url.get_secret_value() if settings.slack_webhook_url else None,
    )
    if not routes.channels:
        raise ConfigError("no notification channel: give --routes, THERMOFLOW_WEBHOOK_URL or keep the log")
    return routes


def build_channels(routes: Routes, *, timeout: float) -> dict[str, Channel]:
    """One channel object per configured route; secrets resolved from the environment."""
    channels: dict[str, Channel] = {}
    for name, route in routes.channels.items():
        if isinstance(route, LogRoute):
            channels[name] = LogChannel(name, path=Path(route.path) if route.path else None)
        elif isinstance(route, WebhookRoute):
            url = route.url or env_secret(route.url_env)
            secret = route.secret.get_secret_value() if route.secret else env_secret(route.secret_env)
            if not url or not secret:
                raise ConfigError(f"webhook channel {name} needs url (or url_env) and secret (or secret_env)")
            channels[name] = WebhookChannel(name, url=url, secret=secret, timeout=timeout)
        elif isinstance(route, SlackRoute):
            url = route.url.get_secret_value() if route.url else env_secret(route.url_env)
            if not url:
                raise ConfigError(f"slack channel {name} needs url or url_env")
            channels[name] = SlackChannel(name, url=url, timeout=timeout)
        elif isinstance(route, EmailRoute):
            password = route.password.get_secret_value() if route.password else env_secret(route.password_env)
            channels[name] = EmailChannel(
                name,
                host=route.host,
                port=route.port,
                sender=route.sender,
                recipients=route.recipients,
                starttls=route.starttls,
                use_ssl=route.ssl,
                username=route.username,
                password=password,
                ca_file=route.ca_file,
                timeout=route.timeout,
            )
    return channels


class Notifier:
    def __init__(
        self,
        settings: AlertsSettings,
        *,
        dispatcher: Dispatcher | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics or Metrics("alerts.notify")
        self.tracker = IncidentTracker(
            Policy(resolve_after=settings.resolve_after, repeat_interval=settings.repeat_interval)
        )
        self.watermarks = PipelineWatermarks()
        self.watchdog = Watchdog(component="alerts.notify", stall_after=settings.stall_timeout)
        self._dispatcher = dispatcher
        tracing.configure("alerts-notify")
        self._persisting: asyncio.Future[bool] | None = None  # the last batch's state write
        self._next_tick = 0.0

    async def reload_state(self, assigned: object = None) -> None:
        """Take the latest persisted states: another instance may have moved on since.

        The loop's ``on_assigned``: no batch of the new assignment is handled before it is done.
        """
        states = await load_states(self.settings, self.settings.notifier_state_topic)
        self.tracker.load(states)
        log.info("notifier_state_loaded", incidents=len(states), open=self.tracker.open_count)

    async def _persist(
        self, producer: AIOKafkaProducer, previous: asyncio.Future[bool] | None, changed: list[Incident]
    ) -> bool:
        """Write the batch's changed incident states (acked) after the previous batch's, in order."""
        if previous is not None:
            await previous
        started = time.perf_counter()
        await write_states(producer, self.settings.notifier_state_topic, changed)
        self.metrics.observe("persist_state", time.perf_counter() - started)
        return True

    def _build_dispatcher(self, dead_letters: KafkaDeadLetters) -> Dispatcher:
        settings = self.settings
        routes = load_routes(settings)
        return Dispatcher(
            build_channels(routes, timeout=settings.notify_timeout),
            routes,
            dead_letters=dead_letters,
            retry=RetryPolicy(
                attempts=settings.notify_retries,
                backoff=settings.notify_backoff,
                backoff_max=settings.notify_backoff_max,
                timeout=settings.notify_timeout,
            ),
            breaker_failures=settings.breaker_failures,
            breaker_reset=settings.breaker_reset,
            concurrency=settings.notify_concurrency,
            metrics=self.metrics,
        )

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Consume, notify, persist, commit, until ``stop`` is set; then finish the batch and return.

        ``/metrics``, ``/healthz`` and ``/readyz`` are served all along (:mod:`thermoflow.http`).
        """
        async with serve(
            self.settings.http_port, self.metrics, component_health(self.settings, self.watchdog)
        ):
            await self._run(stop, ready=ready)

    async def _run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        settings = self.settings
        await kafka.ensure_topics(settings, {settings.alerts_topic: 6, settings.deadletter_topic: 3})
        await ensure_state_topic(settings, settings.notifier_state_topic)
        producer = kafka.producer(settings, linger_ms=0)  # state writes are on the latency path
        dead_letters = KafkaDeadLetters(producer, settings.deadletter_topic)
        dispatcher = self._dispatcher or self._build_dispatcher(dead_letters)
        consumer = kafka.consumer(
            settings, group_id=settings.notify_group, sparse=True, max_poll_records=2000
        )

        async def start(batch: consume.Batch) -> consume.Durable:
            return await self._start(
                batch, consumer=consumer, producer=producer, dispatcher=dispatcher, dead_letters=dead_letters
            )

        loop = consume.ConsumeLoop(
            consumer,
            topics=[settings.alerts_topic],
            handle=start,
            watchdog=self.watchdog,
            batch_size=2000,
            wait=0.2,
            # The next batch is fetched and dispatched while this one's states are written.
            pipeline=1,
            on_assigned=self.reload_state,
            metrics=self.metrics,
            group=settings.notify_group,
            commit_every=settings.alerts_commit_every,
        )
        watching: asyncio.Task[None] | None = None
        try:
            await producer.start()
            await consumer.start()
            log.info("notifier_started", topic=settings.alerts_topic, group=settings.notify_group,
                     channels=list(dispatcher.channels))  # fmt: skip
            watching = asyncio.create_task(self._watch_pipeline(stop, producer, consumer, dispatcher))
            if ready is not None:
                ready.set()
            await loop.run(stop)
        finally:
            if watching is not None:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            await consumer.stop()
            await dispatcher.close()
            await producer.stop()
            snapshot = self.metrics.snapshot()
            log.info("notifier_stopped", **snapshot["counters"], latency=snapshot["latency"])

    async def _watch_pipeline(
        self,
        stop: asyncio.Event,
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        dispatcher: Dispatcher,
    ) -> None:
        """The pipeline's own alerts (:mod:`thermoflow.alerts.pipeline_watch`): this instance's
        breakers, and the cluster's dead letters and lags when it holds alerts partition 0."""
        watch = PipelineWatch(
            self.settings,
            producer=producer,
            breakers=lambda: dispatcher.breakers,
            owner=lambda: any(tp.partition == 0 for tp in consumer.assignment()),
            left_open=self._pipeline_incident_open,
        )
        await watch.run(stop)

    def _pipeline_incident_open(self, rule_id: str, condition: Condition) -> bool:
        """Whether the tracker knows an open ``pipeline`` incident of this rule and condition (one an
        earlier process raised is cleared once all is well; the state topic tells them all)."""
        incident = self.tracker.incidents.get((PIPELINE_DEVICE, rule_id, incident_kind(condition)))
        return incident is not None and incident.is_open

    async def _start(
        self,
        batch: consume.Batch,
        *,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        dispatcher: Dispatcher,
        dead_letters: KafkaDeadLetters,
    ) -> consume.Durable:
        """Fold the batch into the tracker and deliver its notifications, in order; return its state write."""
        now = self.clock()
        decoded = await decode_batch(batch.records, dead_letters)
        notifications = []
        traces: dict[str, bytes] = {}  # a notification's alert's traceparent, by idempotency key
        for partition, event in decoded.events:  # in order: a watermark covers the alerts before it
            if isinstance(event, AlertEvent):
                fired = self.tracker.on_alert(event, now=now, partition=partition)
                traceparent = decoded.traces.get(event.alert_id)
                if traceparent is not None:
                    traces.update((notification.idempotency_key, traceparent) for notification in fired)
                notifications += fired
                continue
            if isinstance(event, Clear):
                notifications += self.tracker.on_clear(event, now=now)
                continue
            if isinstance(event, Ack):  # an operator's: told once, and no more repeats
                notifications += self.tracker.on_ack(event, now=now)
                continue
            self.watermarks.observe(partition, event)
            watermark = self.watermarks.watermark(partition)
            if watermark is not None:
                notifications += self.tracker.on_watermark(partition=partition, watermark=watermark, now=now)
        # Repeats only once caught up: a backlog may still hold what resolves the incident.
        if now >= self._next_tick and await caught_up(consumer):
            assigned = {tp.partition for tp in consumer.assignment()}
            notifications.extend(self.tracker.on_tick(now=now, partitions=assigned))
            self._next_tick = now + self.settings.sweep_interval
        started = time.perf_counter()
        if notifications:
            await dispatcher.dispatch(notifications, traces=traces)
            self.metrics.count("notifications", len(notifications))
            self.metrics.observe("dispatch", time.perf_counter() - started)
        self.metrics.count("alerts", decoded.received)
        for severity, count in self.tracker.open_by_severity().items():
            self.metrics.gauge("incidents_open", count, severity=severity)
        # Written while the next batch is fetched and dispatched; chained, so states stay in order.
        self._persisting = asyncio.create_task(
            self._persist(producer, self._persisting, self.tracker.take_changed())
        )
        return self._persisting
