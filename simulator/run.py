"""One simulator run: build the fleet, open the connections, publish, measure, report.

The stages, in order: fleet and rules (pure) -> Kafka meter positioned at the topics' ends
(``--measure``) -> connections opened with the ramp -> paced publishing until the duration
is over or a stop is asked -> the connections drain (queued publishes written, QoS 1 acks
in) and close -> the meter waits for the pipeline to catch up -> ground truth and report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka.errors import KafkaError

from thermoflow.errors import ServiceError
from thermoflow.http import Health, serve
from thermoflow.logs import get_logger
from thermoflow.metrics import Metrics
from thermoflow.rules import DEFAULT_RULES_FILE, DetectorConfig, load_rules
from thermoflow.simulator.anomalies import KINDS, Injector, Schedule, load_schedule, parse_kinds
from thermoflow.simulator.connection import Endpoint
from thermoflow.simulator.detectability import injected_anomalies, judge, rule_detectors
from thermoflow.simulator.detection import anomaly_detection, incidents_from_alerts
from thermoflow.simulator.engine import Engine
from thermoflow.simulator.measure import KafkaMeter, database_delivery
from thermoflow.simulator.payloads import METRIC, PayloadFormat, topic_for
from thermoflow.simulator.profiles import Fleet, SignalModel, parse_mix
from thermoflow.simulator.publisher import Pacer, Pool, Sample
from thermoflow.simulator.report import REPORT_VERSION, plot, write_report
from thermoflow.simulator.score import AlertScorer, KeyMode, delivery, percentiles
from thermoflow.simulator.settings import SimulatorSettings
from thermoflow.simulator.truth import GroundTruth, Thresholds, TruthFile, write_truth

log = get_logger(__name__)


@dataclass
class Outputs:
    """Where the run writes, and how long it waits for the pipeline."""

    report: Path | None = None
    ground_truth: Path | None = None
    plot: Path | None = None
    measure: bool = False
    measure_timeout: float = 60.0
    measure_quiet: float = 3.0
    drain_timeout: float = 30.0


@dataclass
class Controls:
    """Signals from outside: the first stop ends publishing, the second abandons waiting."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    publishing_over: bool = False

    def signal(self) -> None:
        """SIGINT/SIGTERM: stop publishing; once publishing is over (or on a second signal), stop waiting."""
        if self.stop.is_set() or self.publishing_over:
            self.abort.set()
        self.stop.set()


View = Callable[[str, Sample | None], None]


def count_second(metrics: Metrics, sample: Sample) -> None:
    """One second of publishing, into the simulator's Prometheus metrics."""
    metrics.count("published", sample.written)
    metrics.gauge("queued", sample.queued)
    metrics.gauge("unacked", sample.unacked)
    metrics.gauge("connections", sample.connected)
    metrics.gauge("target_rate", sample.due / sample.t if sample.t else 0.0)


async def simulate(
    settings: SimulatorSettings, outputs: Outputs, controls: Controls, view: View | None = None
) -> dict[str, Any]:
    """Run the load test; returns the report (also written to ``outputs.report``).

    With ``http_port`` set, ``/metrics`` serves the publishing as it goes (messages written,
    queued, unacked, connections), so Prometheus sees the load beside the pipeline's figures.
    """
    metrics = Metrics("simulator")
    async with serve(settings.http_port, metrics, Health()):
        return await _simulate(settings, outputs, controls, metrics, view)


async def _simulate(
    settings: SimulatorSettings,
    outputs: Outputs,
    controls: Controls,
    metrics: Metrics,
    view: View | None,
) -> dict[str, Any]:
    show = view or (lambda phase, sample: None)
    fleet = Fleet.build(devices=settings.devices, seed=settings.seed, mix=parse_mix(settings.profiles))
    rules_path = settings.rules or DEFAULT_RULES_FILE
    rules = load_rules(rules_path)
    detectors = rule_detectors(rules)
    thresholds = Thresholds.compile(rules, fleet.device_ids, metric=METRIC)
    rate = settings.per_device_rate
    explicit = (
        load_schedule(settings.anomaly_schedule, fleet=fleet, rate=rate) if settings.anomaly_schedule else []
    )
    schedule = Schedule(
        devices=len(fleet),
        rate=rate,
        seed=settings.seed,
        per_hour=settings.anomaly_rate,
        kinds=parse_kinds(settings.anomaly_kinds),
        explicit=explicit,
    )
    injector = Injector(schedule, flap_level=thresholds.flap_levels(fleet.high + 2.0))
    # Without a report, a ground-truth file or --measure nobody reads the breaches: count them only.
    keep_truth = bool(outputs.report or outputs.ground_truth or outputs.measure)
    truth = GroundTruth(thresholds, fleet.device_ids, keep=keep_truth)
    payload_format = PayloadFormat(settings.format)
    signal_model = SignalModel(
        fleet,
        rate=rate,
        seed=settings.seed,
        start=time.time() - settings.clock_start,
        time_scale=settings.time_scale,
    )
    engine = Engine(
        fleet=fleet,
        signal=signal_model,
        injector=injector,
        payload_format=payload_format,
        truth=truth,
        seed=settings.seed,
        keep_keys=outputs.measure,
    )
    topics = [topic_for(settings.topic_template, device_id=d) for d in fleet.device_ids]
    credentials = settings.mqtt_credentials
    endpoint = Endpoint(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        ssl=settings.mqtt_ssl_context(),
        username=credentials[0] if credentials else None,
        password=credentials[1] if credentials else None,
        keepalive=settings.keepalive,
    )
    pool = Pool(
        endpoint=endpoint,
        count=settings.connection_count,
        qos=settings.qos,
        window=settings.inflight,
        client_prefix=settings.client_id_prefix,
    )
    pacer = Pacer(
        engine=engine,
        pool=pool,
        total_rate=settings.fleet_rate,
        duration=settings.duration,
        max_backlog=settings.max_backlog,
    )
    pacer.set_topics(topics)
    meter: KafkaMeter | None = None
    run_started = time.time()
    if outputs.measure:
        show("positioning the Kafka meter", None)
        meter = KafkaMeter(
            settings=settings,
            device_index={d: i for i, d in enumerate(fleet.device_ids)},
            mqtt_topics=set(topics),
            since=run_started - 1.0,
        )
        try:
            await meter.start()
        except (KafkaError, OSError) as exc:
            raise ServiceError(
                f"--measure: cannot read Kafka at {settings.kafka_bootstrap} ({type(exc).__name__}: {exc});"
                " is it running? (--kafka-bootstrap or THERMOFLOW_KAFKA_BOOTSTRAP)"
            ) from None
    try:
        show("connecting", None)
        ramp_started = time.monotonic()
        await pool.open(ramp_s=settings.ramp, timeout=settings.ramp + 30.0, stop=controls.stop)
        ramp_s = time.monotonic() - ramp_started
        connected_at_start = pool.stats.connected
        if connected_at_start == 0 and not controls.stop.is_set():
            raise ServiceError(
                f"no connection to the MQTT broker at {endpoint.host}:{endpoint.port}"
                f" ({pool.stats.last_error}); is it running? (--mqtt-url or THERMOFLOW_MQTT_URL)"
            )
        log.info("connected", connections=connected_at_start, of=pool.count, seconds=round(ramp_s, 2))
        if not controls.stop.is_set():

            def on_second(sample: Sample) -> None:
                count_second(metrics, sample)
                show("publishing", sample)

            await pacer.run(controls.stop, on_second=on_second)
        publish_ended = time.time()
        controls.publishing_over = True
        show("draining", pacer.timeline[-1] if pacer.timeline else None)
        drain_started = time.monotonic()
        drained = await pool.drain(timeout=0.0 if controls.abort.is_set() else outputs.drain_timeout)
        drain_s = time.monotonic() - drain_started
        unacked = pool.unacked
        queued = pool.stats.queued
        await pool.close()
        measured: dict[str, Any] = {}
        if meter is not None:
            show("waiting for the pipeline", None)
            measured = await _measure(
                settings, outputs, controls, meter, engine, truth, run_started, publish_ended
            )
    finally:
        if meter is not None:
            await meter.close()
        if not pool.closed:
            await pool.close()

    episodes = truth.episodes(incident_gap=settings.episode_gap) if keep_truth else []
    breaches = truth.breaches() if keep_truth else []
    truth_path = outputs.ground_truth or (
        outputs.report.with_name(outputs.report.stem + ".truth.json") if outputs.report else None
    )
    if truth_path is not None:
        write_truth(
            truth_path,
            TruthFile(
                rules=str(rules_path),
                incident_gap_s=settings.episode_gap,
                published={d: int(n) for d, n in zip(fleet.device_ids, engine.seq.tolist(), strict=True)},
                breaches=breaches,
                malformed=truth.malformed(),
                episodes=episodes,
                anomalies=[_anomaly_json(a, fleet.device_ids, rate) for a in engine.anomalies],
            ),
        )
    if meter is not None:
        scorer = AlertScorer(breaches=breaches, episodes=episodes, by_value=not payload_format.has_ts)
        # The threshold rules' implementation against their scalar reference: the detectors' alerts
        # have no breach to match, they are scored in anomaly_detection.
        measured["alerts"] = scorer.score(a for a in meter.alerts if a.condition in ("above", "below"))
    stats = pool.stats
    duration = pacer.elapsed or 1e-9
    messages = pacer.readings + pacer.malformed
    slot_rate = engine.slots / duration
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "run": {
            "started_at": pacer.started or run_started,
            "ended_at": publish_ended,
            "duration_s": round(duration, 3),
            "seed": settings.seed,
            "devices": settings.devices,
            "connections": settings.connection_count,
            "qos": settings.qos,
            "format": settings.format,
            "topic_template": settings.topic_template,
            "rate_per_device": rate,
            "target_rate": settings.fleet_rate,
            "rules": str(rules_path),
            "incident_gap_s": settings.episode_gap,
        },
        "published": pacer.readings,
        "publish": {
            "messages": messages,
            "readings": pacer.readings,
            "malformed": pacer.malformed,
            "offline_slots": engine.skipped,
            "slots": engine.slots,
            "target_rate": settings.fleet_rate,
            "achieved_rate": round(messages / duration, 1),
            "slot_rate": round(slot_rate, 1),
            "rate_held": slot_rate >= 0.97 * settings.fleet_rate,
            "written": stats.written,
            "acked": stats.acked,
            "unacked_at_end": unacked,
            "resent": stats.resent,
            "queued_at_end": queued,
            "drained": drained,
            "drain_s": round(drain_s, 3),
            "errors": queued + (unacked if settings.qos else 0),
            "connections": {
                "target": settings.connection_count,
                "connected_at_start": connected_at_start,
                "connected_at_end": stats.connected,
                "connect_failures": stats.connect_failures,
                "disconnects": stats.disconnects,
                "reconnects": stats.reconnects,
                "ramp_s": round(ramp_s, 3),
            },
            "ack_latency": percentiles(stats.ack_latency) if settings.qos else None,
            "timeline": [
                {
                    "t": s.t,
                    "written": s.written,
                    "rate": s.rate,
                    "due": s.due,
                    "slots": s.slots,
                    "queued": s.queued,
                    "unacked": s.unacked,
                    "connected": s.connected,
                }
                for s in pacer.timeline
            ],
        },
        "anomalies": {
            "by_kind": {k: injector.counts[k] for k in KINDS},
            "total": sum(injector.counts.values()),
            "events": [_anomaly_json(a, fleet.device_ids, rate) for a in engine.anomalies[:200]],
        },
        "ground_truth": {
            "file": str(truth_path) if truth_path else None,
            "rules": str(rules_path),
            "kept": keep_truth,
            "breaching_readings": truth.breach_count,
            "by_severity": {s: truth.counts[s] for s in ("warning", "critical")},
            "malformed": truth.malformed_count,
            "episodes": {
                s: sum(1 for e in episodes if e.level == s) if keep_truth else None
                for s in ("warning", "critical")
            },
        },
        "measured": meter is not None,
        "latency": measured.get("latency"),
        "delivery": measured.get("delivery"),
        "alerts": measured.get("alerts"),
        "anomaly_detection": _anomaly_detection(
            settings, engine, truth, thresholds, detectors, meter, duration=duration, injected=injector.counts
        )
        if keep_truth
        else None,
    }
    if not report["publish"]["rate_held"]:
        log.warning(
            "rate_not_held",
            target_rate=settings.fleet_rate,
            slot_rate=report["publish"]["slot_rate"],
            hint="CPU-bound or the broker is slow: fewer devices/rate, QoS 0, or more connections",
        )
    if outputs.report is not None:
        write_report(outputs.report, report)
    if outputs.plot is not None:
        plot(outputs.plot, report, _latency_series(meter, report["run"]["started_at"]))
    return report


async def _measure(
    settings: SimulatorSettings,
    outputs: Outputs,
    controls: Controls,
    meter: KafkaMeter,
    engine: Engine,
    truth: GroundTruth,
    run_started: float,
    publish_ended: float,
) -> dict[str, Any]:
    timeout = 0.0 if controls.abort.is_set() else outputs.measure_timeout
    settled = await meter.settle(
        readings=engine.seq.sum().item(),
        deadletters=truth.malformed_count,
        timeout=timeout,
        quiet_s=outputs.measure_quiet,
        stop=controls.abort,
    )
    assert engine.keys is not None
    fmt = engine.format
    mode: KeyMode = "seq" if fmt.has_seq else ("ts" if fmt.has_ts else "count")
    received = meter.received_arrays()
    if mode == "seq" and received[1].size and (received[1] < 0).any():
        mode = "ts"  # the bridge dropped the sequence numbers: key by timestamp instead
    kafka_delivery = delivery(
        mode=mode, published=engine.keys.arrays(), received=received, origin=run_started
    )
    kafka_delivery["lost_by_device"] = {
        engine.fleet.device_ids[d]: n for d, n in kafka_delivery["lost_by_device"].items()
    }
    latency = meter.latency(with_ts=fmt.has_ts)
    database: dict[str, Any]
    try:
        database = await database_delivery(
            settings,
            device_ids=list(engine.fleet.device_ids),
            since=run_started - 1.0,
            until=publish_ended + 5.0,
            expected=int(engine.seq.sum()),
            timeout=0.0 if controls.abort.is_set() else max(5.0, outputs.measure_timeout / 2),
            stop=controls.abort,
        )
    except Exception as exc:  # noqa: BLE001 - report why the database could not be measured, keep the rest
        database = {"error": f"{type(exc).__name__}: {exc}"}
    latency["publish_to_stored"] = database.pop("latency", None)
    return {
        "latency": latency,
        "delivery": {
            "kafka": kafka_delivery,
            "database": database,
            "deadletter": {"expected": truth.malformed_count, "received": meter.deadletters},
            "settled": settled,
            "consumer_lag": meter.lag_at_end,
            "undecodable": meter.undecodable,
            "foreign": meter.foreign,
        },
    }


def _anomaly_detection(
    settings: SimulatorSettings,
    engine: Engine,
    truth: GroundTruth,
    thresholds: Thresholds,
    detectors: dict[str, DetectorConfig],
    meter: KafkaMeter | None,
    *,
    duration: float,
    injected: dict[str, int],
) -> dict[str, Any]:
    """The report's ``anomaly_detection`` section (:mod:`thermoflow.simulator.detection`)."""
    fleet = engine.fleet
    rule_ids = [thresholds.rule_ids[i] if i >= 0 else None for i in thresholds.rule_index.tolist()]
    noise_sigma = np.array([p.noise_sigma for p in fleet.profiles])[fleet.profile_index]
    breach_devices, _, breach_ts, *_ = truth.breach_arrays()
    anomalies = injected_anomalies(
        anomalies=engine.anomalies,
        started_at=engine.anomaly_started_at,
        device_ids=fleet.device_ids,
        rule_ids=rule_ids,
        noise_sigma=noise_sigma,
        rate=settings.per_device_rate,
        ticks=engine.tick + 1,
        breach_devices=breach_devices,
        breach_ts=breach_ts,
    )
    incidents = None if meter is None else incidents_from_alerts(meter.alerts, gap=settings.episode_gap)
    return anomaly_detection(
        anomalies=anomalies,
        detectable=judge(anomalies, detectors),
        detectors=detectors,
        incidents=incidents,
        grace_s=settings.detection_grace,
        incident_gap_s=settings.episode_gap,
        device_hours=len(fleet) * duration / 3600.0,
        excluded={"malformed": injected.get("malformed", 0)},
    )


def _anomaly_json(anomaly: Any, device_ids: tuple[str, ...], rate: float) -> dict[str, Any]:
    return {
        "kind": anomaly.kind,
        "device_id": device_ids[anomaly.device],
        "start_tick": anomaly.start,
        "end_tick": anomaly.end,
        "start_s": round(anomaly.start / rate, 3),
        "duration_s": round((anomaly.end - anomaly.start) / rate, 3),
        "magnitude": round(anomaly.magnitude, 3),
    }


def _latency_series(meter: KafkaMeter | None, started: float) -> dict[str, list[tuple[float, float]]]:
    """Per-second p99 of publish->Kafka, by publish second (for the plot)."""
    if meter is None or not len(meter.readings_ts):
        return {}
    ts = np.frombuffer(meter.readings_ts) - started
    lag = np.frombuffer(meter.to_kafka)
    second = np.floor(ts).astype(np.int64)
    series = []
    for s in np.unique(second).tolist():
        values = lag[second == s]
        series.append((float(s), float(np.percentile(values, 99)) * 1000))
    return {"publish->kafka": series}
