"""A real MQTT subscriber that records what the simulator published, and a way to run a simulation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import Endpoints, unique_name
from thermoflow import mqtt
from thermoflow.settings import ThermoflowSettings
from thermoflow.simulator.run import Controls, Outputs, simulate
from thermoflow.simulator.settings import SimulatorSettings


@dataclass
class Subscriber:
    """Subscribes to ``<prefix>/#`` and keeps every (topic, payload) in arrival order."""

    settings: ThermoflowSettings
    prefix: str
    qos: int = 1
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        subscribed = threading.Event()
        self.client = mqtt.client(self.settings, client_id=unique_name("sim-sub"), version="3.1.1")
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.max_queued_messages_set(0)
        self.client.connect(self.settings.mqtt_host, self.settings.mqtt_port)
        self.client.subscribe(f"{self.prefix}/#", qos=self.qos)
        self.client.loop_start()
        if not subscribed.wait(10):
            self.close()
            raise TimeoutError("no SUBACK")

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def wait_for(self, count: int, *, timeout: float = 30.0, settle: float = 0.5) -> list[tuple[str, bytes]]:
        """Wait for ``count`` messages (and ``settle`` seconds more, to catch any extra)."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber_for(endpoints: Endpoints) -> Iterator[Any]:
    made: list[Subscriber] = []

    def make(prefix: str, qos: int = 1) -> Subscriber:
        sub = Subscriber(endpoints.settings(), prefix, qos)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


def run_simulation(settings: SimulatorSettings, outputs: Outputs) -> dict[str, Any]:
    """Run :func:`thermoflow.simulator.run.simulate` to its end in a fresh event loop."""
    return asyncio.run(simulate(settings, outputs, Controls()))
