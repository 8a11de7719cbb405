"""One sampled reading followed through the real pipeline: the same trace at every hop.

`thermoflow run` (bridge, processor, sink, alert store, notifier) on the shared Mosquitto, Kafka
and PostgreSQL, with every trace sampled and spans exported over OTLP/HTTP to a receiver in
this test. One hot reading is published over MQTT; its trace id must be on the reading's Kafka
record, on the alert's, in the webhook's ``traceparent`` header and in the notifier's log line,
and the exported spans must chain bridge -> processor -> alert store and notifier.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import ROOT, Endpoints, free_port
from tests.integration.ingest.helpers import KafkaReader, publish
from tests.support.rules import thresholds_only_rules
from thermoflow import tracing
from thermoflow.events import decode_alert, is_clear, is_watermark
from thermoflow.pipeline_run import PipelineRun

RULES = thresholds_only_rules(ROOT / ".thermoflow" / "tracing" / "rules-thresholds-only.yaml")


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span


@dataclass
class OtlpReceiver:
    """A tiny OTLP/HTTP trace receiver (protobuf, what opentelemetry-exporter-otlp-proto-http sends)."""

    port: int = field(default_factory=free_port)
    spans: list[ExportedSpan] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ExportedSpan(
                            service=attributes.get("service.name", ""),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                        )
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def of_trace(self, trace_id: str) -> dict[str, ExportedSpan]:
        return {span.name: span for span in self.spans if span.trace_id == trace_id}


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


async def until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout:.0f}s")


async def test_one_sampled_reading_keeps_its_trace_from_mqtt_to_the_webhook(
    endpoints: Endpoints, otlp: OtlpReceiver
) -> None:
    run = PipelineRun.isolated(endpoints.settings(), ROOT / ".thermoflow" / "tracing", resolve_after=600)
    run.names.update(
        {
            "THERMOFLOW_RULES_FILE": str(RULES),
            "THERMOFLOW_INGEST_SILENT_AFTER": "3600",
            "THERMOFLOW_TRACE_SAMPLE_RATIO": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
    )
    device = "freezer-trace-1"
    try:
        await run.start()
        payload = json.dumps({"value": 5.0, "ts": time.time(), "unit": "C"}).encode()  # above critical -8
        await asyncio.to_thread(publish, endpoints, [(f"{run.mqtt_prefix}/{device}/temperature", payload)])
        await until(
            lambda: any(d.json.get("device_id") == device for d in run.receiver.deliveries),
            timeout=120,
            what="webhook delivery",
        )
        [delivery] = [d for d in run.receiver.deliveries if d.json["device_id"] == device]

        # The reading's record: the trace starts at the bridge.
        settings = run.settings
        async with KafkaReader(
            settings.kafka_bootstrap, settings.readings_topic, settings.alerts_topic
        ) as kafka:
            await kafka.until(
                lambda: (
                    bool(kafka.records[settings.readings_topic])
                    and bool(kafka.records[settings.alerts_topic])
                ),
                timeout=30,
                what="the reading and the alert in Kafka",
            )
            [reading] = kafka.records[settings.readings_topic]
            alerts = [
                r
                for r in kafka.records[settings.alerts_topic]
                if not is_watermark(r.headers) and not is_clear(r.headers)
            ]
        at_bridge = tracing.parse(tracing.header_of(reading.headers))
        assert at_bridge is not None and at_bridge.sampled
        trace_id = at_bridge.trace_id

        # The alert's record: the same trace, its parent the processor's span.
        [alert] = alerts
        assert decode_alert(alert.value).device_id == device
        at_processor = tracing.parse(tracing.header_of(alert.headers))
        assert at_processor is not None and at_processor.trace_id == trace_id
        assert at_processor.span_id != at_bridge.span_id

        # The webhook: the same trace, its parent the notifier's span.
        at_webhook = tracing.parse(delivery.headers.get("traceparent"))
        assert at_webhook is not None and at_webhook.trace_id == trace_id

        # The spans: bridge -> processor -> alert store and notifier, one trace.
        names = ("bridge.message", "processors.thresholds", "alerts.store", "alerts.notify")
        await until(lambda: set(names) <= set(otlp.of_trace(trace_id)), timeout=60, what=f"spans {names}")
        spans = otlp.of_trace(trace_id)
        assert spans["bridge.message"].parent_id == ""
        assert spans["bridge.message"].span_id == at_bridge.span_id
        assert spans["processors.thresholds"].parent_id == at_bridge.span_id
        assert spans["processors.thresholds"].span_id == at_processor.span_id
        assert spans["alerts.store"].parent_id == at_processor.span_id
        assert spans["alerts.notify"].parent_id == at_processor.span_id
        assert spans["alerts.notify"].span_id == at_webhook.span_id
        services = {
            "thermoflow-bridge",
            "thermoflow-processors",
            "thermoflow-alerts-store",
            "thermoflow-alerts-notify",
        }
        assert {span.service for span in spans.values()} == services

        # The notifier's log line names the trace.
        # `thermoflow run` prefixes each line with the instance's name.
        sent = [json.loads(line[line.index("{") :]) for line in run.output if '"notification_sent"' in line]
        assert any(line.get("trace_id") == trace_id and line.get("device_id") == device for line in sent)
    finally:
        await run.stop()
        run.drop_schema()
