"""The bridge over TLS with a client certificate and a password, to a real Mosquitto."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, Endpoints, free_port
from tests.integration.ingest.helpers import KafkaReader, bridge_settings, mqtt_prefix, publish, wait_for
from tests.integration.ingest.test_bridge import valid_message
from thermoflow.events import decode_reading
from thermoflow.ingest.bridge import run_bridge
from thermoflow.ingest.settings import IngestSettings
from thermoflow.metrics import Metrics
from thermoflow.settings import ThermoflowSettings
from thermoflow.stack.services import Mosquitto, remove_home, service_home

USER, PASSWORD = "bridge", "s3cret-pass"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    folder.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=thermoflow test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    extensions = {"server": "subjectAltName=IP:127.0.0.1", "client": "extendedKeyUsage=clientAuth"}
    for name, extension in extensions.items():
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=folder)  # fmt: skip
        (folder / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)  # fmt: skip
    for path in folder.iterdir():
        path.chmod(0o644)  # the broker runs as its own user


@dataclass(frozen=True)
class TlsMosquitto(Mosquitto):
    """The stack's Mosquitto plus a TLS listener that wants a client certificate and a password."""

    tls_port: int = 0

    def config(self) -> str:
        certs = self.home / "certs"
        plain = super().config().replace("per_listener_settings false", "per_listener_settings true")
        return plain + "\n".join(
            [
                f"listener {self.tls_port} {self.host}",
                "allow_anonymous false",
                f"password_file {self.home / 'passwd'}",
                f"cafile {certs / 'ca.pem'}",
                f"certfile {certs / 'server.pem'}",
                f"keyfile {certs / 'server.key'}",
                "require_certificate true",
                "",
            ]
        )


@pytest.fixture
def tls_broker() -> Iterator[TlsMosquitto]:
    home = service_home(ROOT / ".thermoflow" / f"mosquitto-tls-{uuid.uuid4().hex[:8]}")
    make_certificates(home / "certs")
    passwd = home / "passwd"
    command = ["mosquitto_passwd", "-b", "-c", str(passwd), USER, PASSWORD]
    subprocess.run(command, check=True, capture_output=True)
    passwd.chmod(0o644)
    broker = TlsMosquitto(home=home, host="127.0.0.1", port=free_port(), tls_port=free_port())
    broker.up()
    yield broker
    broker.down()
    remove_home(home)  # with /var/lib/thermoflow/<hash> when it went there: nothing accumulates


def tls_bridge_settings(
    base: ThermoflowSettings, new_topic: Callable[..., str], broker: TlsMosquitto, *, password: str
) -> IngestSettings:
    """A bridge on the broker's TLS listener, with the client certificate and this password."""
    certs = broker.home / "certs"
    return bridge_settings(
        base,
        new_topic,
        mqtt_url=f"mqtts://127.0.0.1:{broker.tls_port}",
        mqtt_username=USER,
        mqtt_password=password,
        mqtt_tls_ca=certs / "ca.pem",
        mqtt_tls_cert=certs / "client.pem",
        mqtt_tls_key=certs / "client.key",
    )


async def test_bridge_over_tls_with_a_client_certificate_and_a_password(
    endpoints: Endpoints,
    settings: ThermoflowSettings,
    new_topic: Callable[..., str],
    tls_broker: TlsMosquitto,
) -> None:
    config = tls_bridge_settings(settings, new_topic, tls_broker, password=PASSWORD)
    # Devices publish on the plain listener; the bridge reads the same topics over TLS.
    devices = Endpoints(
        mqtt_url=tls_broker.address,
        kafka_bootstrap=endpoints.kafka_bootstrap,
        database_url=endpoints.database_url,
        origin="own broker",
    )
    messages = [valid_message(i, mqtt_prefix(config)) for i in range(5000)]
    metrics = Metrics("bridge")
    stop = asyncio.Event()
    bridge = asyncio.create_task(run_bridge(config, stop=stop, metrics=metrics))
    try:
        async with KafkaReader(endpoints.kafka_bootstrap, config.readings_topic) as kafka:
            await wait_for(lambda: metrics.counter("mqtt_connects") >= 1, timeout=30, what="a TLS connection")
            await asyncio.sleep(0.5)  # subscribed
            await asyncio.to_thread(publish, devices, [(topic, payload) for topic, payload, _, _ in messages])
            await kafka.until_count(config.readings_topic, len(messages), timeout=60)
            readings = kafka.records[config.readings_topic]
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    assert {(decode_reading(r.value).device_id, decode_reading(r.value).ts) for r in readings} == {
        key for _, _, key, _ in messages
    }
    assert metrics.counter("acked") == len(messages)


async def test_a_wrong_password_is_refused_and_logged(
    settings: ThermoflowSettings,
    new_topic: Callable[..., str],
    tls_broker: TlsMosquitto,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tls_bridge_settings(settings, new_topic, tls_broker, password="wrong")
    stop = asyncio.Event()
    metrics = Metrics("bridge")
    bridge = asyncio.create_task(run_bridge(config, stop=stop, metrics=metrics))
    logged: list[str] = []

    def refused() -> bool:
        logged.extend(capsys.readouterr())  # stdout and stderr: the log goes to either, as configured
        return "mqtt_connect_refused" in "".join(logged)

    try:
        await wait_for(refused, timeout=30, what="the broker's refusal in the log")
    finally:
        stop.set()
        await asyncio.wait_for(bridge, 60)
    assert metrics.counter("mqtt_connects") == 0
