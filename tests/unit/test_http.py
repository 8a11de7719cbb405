"""The /metrics exposition and the /healthz, /readyz logic, served over real HTTP on localhost."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest

from tests.conftest import free_port
from tests.support.fakes import make_alert
from thermoflow.alerts.lifecycle import Policy
from thermoflow.alerts.tracker import IncidentTracker
from thermoflow.http import Health, serve, tcp_reachable
from thermoflow.metrics import Metrics
from thermoflow.run_plan import PlanError, http_ports, plan
from thermoflow.settings import ConfigError, ThermoflowSettings
from thermoflow.watchdog import Watchdog


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


def test_names_follow_prometheus_conventions() -> None:
    metrics = Metrics("bridge")
    metrics.count("received", 5)
    metrics.count("acked", 3)
    metrics.count("dead_lettered", 2, reason="payload")
    metrics.gauge("in_flight", 7)
    metrics.observe("bridge_latency", 0.002)
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert 'thermoflow_bridge_messages_total{outcome="received"} 5.0' in text
    assert 'thermoflow_bridge_messages_total{outcome="acked"} 3.0' in text
    assert 'thermoflow_bridge_dead_letters_total{reason="payload"} 2.0' in text
    assert "thermoflow_bridge_in_flight_acks 7.0" in text
    assert 'thermoflow_bridge_ack_latency_seconds_bucket{le="0.0025"} 1.0' in text
    # the log line and the demo read the same numbers, under the short names
    snapshot = metrics.snapshot()
    assert snapshot["counters"] == {"received": 5, "acked": 3, "dead_lettered": 2}
    assert snapshot["gauges"] == {"in_flight": 7}


def test_dotted_names_are_channel_labels_and_lag_is_per_partition() -> None:
    metrics = Metrics("alerts.notify")
    metrics.count("delivered.webhook", 2)
    metrics.count("dead_lettered.slack", reason="undeliverable")
    metrics.gauge("consumer_lag", 4, group="g", topic="t", partition="0")
    metrics.gauge("consumer_lag", 6, group="g", topic="t", partition="1")
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert 'thermoflow_alerts_notify_notifications_total{channel="webhook",outcome="delivered"} 2.0' in text
    assert 'thermoflow_alerts_notify_dead_letters_total{channel="slack",reason="undeliverable"} 1.0' in text
    assert 'thermoflow_alerts_notify_consumer_lag{group="g",partition="1",topic="t"} 6.0' in text
    assert metrics.snapshot()["gauges"] == {"consumer_lag": 10}
    assert metrics.counter("delivered.webhook") == 2


def test_healthz_fails_on_a_stall_and_readyz_names_the_failing_check() -> None:
    clock = [0.0]
    dog = Watchdog(component="sink", stall_after=10.0, now=lambda: clock[0], on_stall=lambda: None)
    health = Health(dog)
    connected = [False]
    health.ready_when("kafka", lambda: connected[0])
    assert health.live() == (True, {"loop": True, "progress": True})
    assert health.ready() == (False, {"kafka": False})
    connected[0] = True
    assert health.ready() == (True, {"kafka": True})
    dog.waiting(5)
    clock[0] = 11.0
    assert health.live() == (False, {"loop": True, "progress": False})


async def test_probes_start_unready_and_follow_what_they_find() -> None:
    health = Health()
    answer = [True]

    async def probe() -> bool:
        return answer[0]

    async def broken() -> bool:
        raise ConnectionRefusedError

    health.probe("kafka", probe)
    health.probe("database", broken)
    assert health.ready() == (False, {"kafka": False, "database": False})
    await health.run_probes()
    assert health.ready() == (False, {"kafka": True, "database": False})


async def test_tcp_reachable_is_true_only_for_a_listening_port() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await tcp_reachable(f"127.0.0.1:{free_port()},127.0.0.1:{port}")
    finally:
        server.close()
    assert not await tcp_reachable(f"127.0.0.1:{free_port()}")


async def test_the_three_paths_over_http() -> None:
    metrics = Metrics("sink")
    metrics.count("rows_inserted", 9)
    health = Health()
    ready = [False]
    health.ready_when("database", lambda: ready[0])
    port = free_port()
    async with serve(port, metrics, health):
        status, text = await _get(port, "/metrics")
        assert status == 200
        assert 'thermoflow_sink_rows_total{outcome="inserted"} 9.0' in text
        assert await _get(port, "/healthz") == (200, json.dumps({"ok": True, "checks": {"loop": True}}))
        status, text = await _get(port, "/readyz")
        assert (status, json.loads(text)) == (503, {"ok": False, "checks": {"database": False}})
        ready[0] = True
        assert (await _get(port, "/readyz"))[0] == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(port, "/healthz")  # closed with the component


async def test_port_zero_serves_nothing_and_a_taken_port_fails_fast() -> None:
    async with serve(0, Metrics("sink"), Health()) as port:
        assert port is None
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=r"THERMOFLOW_HTTP_PORT=\d+: cannot serve"):
            async with serve(taken.getsockname()[1], Metrics("sink"), Health()):
                pass


def test_http_port_setting() -> None:
    assert ThermoflowSettings.model_fields["http_port"].default == 9108
    with pytest.raises(ValueError, match="http_port"):
        ThermoflowSettings(http_port=70_000)


def test_run_gives_each_instance_and_worker_its_own_port() -> None:
    instances = plan(scale={"processor": 3, "sink": 2})
    ports = http_ports(instances, base=9108, workers=2)
    used = [p + w for name, p in ports.items() for w in range(2 if name.startswith("processor") else 1)]
    assert len(used) == len(set(used)) == 1 + 3 * 2 + 2 + 1 + 1
    with pytest.raises(PlanError, match="above 65535"):
        http_ports(instances, base=65530, workers=2)


def test_open_incidents_by_severity_for_the_gauge() -> None:
    tracker = IncidentTracker(Policy(resolve_after=60.0, repeat_interval=10_000.0))
    assert tracker.open_by_severity() == {"warning": 0, "critical": 0}
    tracker.on_alert(make_alert("a", 100.0), now=100.0)
    tracker.on_alert(make_alert("b", 100.0), now=100.0)
    tracker.on_alert(make_alert("c", 100.0, severity="critical"), now=100.0)
    assert tracker.open_by_severity() == {"warning": 2, "critical": 1}
