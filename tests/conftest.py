"""The test harness: real service endpoints, per-test topics and schemas.

Endpoints come from ``THERMOFLOW_TEST_MQTT_URL``, ``THERMOFLOW_TEST_KAFKA_BOOTSTRAP`` and
``THERMOFLOW_TEST_DATABASE_URL`` when set; else from testcontainers when a Docker engine
answers; else from a local stack (``.thermoflow/test-stack``, ports 21883/29092/25432)
started once per test session and stopped at its end if this session started it.
Unit tests ask for none of these fixtures and need no service.

The storage tests (``pytestmark = pytest.mark.both_databases``) run twice: on that PostgreSQL
(plain: the local test stack never preloads TimescaleDB) and on TimescaleDB, from
``THERMOFLOW_TEST_TIMESCALE_URL`` when set, else a private server started with the extension
preloaded when it is installed (``make setup`` does that where ../shared/timescaledb exists);
without either the TimescaleDB run is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from thermoflow import db
from thermoflow.kafka import ensure_topics
from thermoflow.settings import ThermoflowSettings
from thermoflow.stack import Stack, StackConfig
from thermoflow.stack.services import Kafka, Mosquitto, Postgres, remove_home, service_home
from thermoflow.stack.stack import default_cache_dir

if TYPE_CHECKING:
    from tests.support.browser import BrowserPage

ROOT = Path(__file__).resolve().parent.parent

# Components started by tests serve no /metrics port unless a test asks for one: many run at
# once (and beside other test runs), and the default port is one port.
os.environ.setdefault("THERMOFLOW_HTTP_PORT", "0")
ENV_VARS = (
    "THERMOFLOW_TEST_MQTT_URL",
    "THERMOFLOW_TEST_KAFKA_BOOTSTRAP",
    "THERMOFLOW_TEST_DATABASE_URL",
)
TIMESCALE_URL_VAR = "THERMOFLOW_TEST_TIMESCALE_URL"
DATABASES = ("postgres", "timescaledb")


@dataclass(frozen=True)
class Endpoints:
    """Where the real services of this test session are."""

    mqtt_url: str
    kafka_bootstrap: str
    database_url: str
    origin: str

    def settings(self, **overrides: Any) -> ThermoflowSettings:
        values: dict[str, Any] = {
            "mqtt_url": self.mqtt_url,
            "kafka_bootstrap": self.kafka_bootstrap,
            "database_url": self.database_url,
            **overrides,
        }
        return ThermoflowSettings(**values)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_databases: run on plain PostgreSQL and on TimescaleDB")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A storage test (marked ``both_databases``) that takes ``settings`` runs once per database."""
    marked = metafunc.definition.get_closest_marker("both_databases")
    given = any("database" in mark.args[0] for mark in metafunc.definition.iter_markers("parametrize"))
    if marked and not given and "database" in metafunc.fixturenames:
        metafunc.parametrize("database", DATABASES, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by folder, so `-m integration` and `-m e2e` select them."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


def _docker_reachable() -> bool:
    """Whether a Docker engine answers a ping (the client alone is not enough)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        import docker

        try:
            client = docker.DockerClient(base_url=host, timeout=3)
        except Exception:  # noqa: BLE001 - unreachable, refused, bad URL: all mean "no"
            return False
        with contextlib.closing(client):
            return bool(client.ping())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(host.removeprefix("unix://"))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


def _from_containers(stack: ExitStack) -> Endpoints:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.mqtt import MosquittoContainer
    from testcontainers.postgres import PostgresContainer

    kafka = stack.enter_context(KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft())
    postgres = stack.enter_context(PostgresContainer("timescale/timescaledb:latest-pg16", driver=None))
    mosquitto = stack.enter_context(MosquittoContainer())
    return Endpoints(
        mqtt_url=f"mqtt://{mosquitto.get_container_host_ip()}:{mosquitto.get_exposed_port(1883)}",
        kafka_bootstrap=kafka.get_bootstrap_server(),
        database_url=postgres.get_connection_url(),
        origin="testcontainers",
    )


def test_stack_config() -> StackConfig:
    return StackConfig(
        state_dir=ROOT / ".thermoflow" / "test-stack",
        mqtt_port=21883,
        kafka_port=29092,
        kafka_controller_port=29093,
        postgres_port=25432,
        timescaledb=False,  # plain PostgreSQL; the TimescaleDB runs get a server of their own
    )


test_stack_config.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    given = {name: os.environ.get(name) for name in ENV_VARS}
    if all(given.values()):
        yield Endpoints(
            mqtt_url=str(given["THERMOFLOW_TEST_MQTT_URL"]),
            kafka_bootstrap=str(given["THERMOFLOW_TEST_KAFKA_BOOTSTRAP"]),
            database_url=str(given["THERMOFLOW_TEST_DATABASE_URL"]),
            origin="environment",
        )
        return
    if any(given.values()):
        missing = [name for name, value in given.items() if not value]
        pytest.exit(f"set all of {', '.join(ENV_VARS)} or none; missing: {', '.join(missing)}", 2)
    if _docker_reachable():
        with ExitStack() as containers:
            yield _from_containers(containers)
        return
    stack = Stack(test_stack_config())
    was_running = all(state == "running" for state in stack.status().values())
    stack.up()
    settings = stack.settings()
    try:
        yield Endpoints(
            mqtt_url=settings.mqtt_url,
            kafka_bootstrap=settings.kafka_bootstrap,
            database_url=settings.database_dsn,
            origin="local stack",
        )
    finally:
        if not was_running:
            stack.down()


@pytest.fixture(scope="session")
def timescale_url(endpoints: Endpoints) -> Iterator[str | None]:
    """A PostgreSQL with TimescaleDB preloaded, for the storage tests' second run; None when there is none."""
    given = os.environ.get(TIMESCALE_URL_VAR)
    if given:
        yield given
        return
    if endpoints.origin == "testcontainers":  # that image is TimescaleDB's
        yield endpoints.database_url
        return
    home = service_home(ROOT / ".thermoflow" / f"timescaledb-{uuid.uuid4().hex[:8]}")
    server = Postgres(home=home, host="127.0.0.1", port=free_port(), timescaledb=True)
    if not server.timescaledb_installed():
        yield None
        return
    with server.serving() as url:
        yield url


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """Which server a test's schema lives on: ``postgres`` (the session's) or ``timescaledb``."""
    return str(getattr(request, "param", "postgres"))


def database_url(request: pytest.FixtureRequest, endpoints: Endpoints, database: str) -> str:
    """The URL of ``database``; skips the test when it is TimescaleDB and there is none."""
    if database != "timescaledb":
        return endpoints.database_url
    url: str | None = request.getfixturevalue("timescale_url")
    if url is None:
        pytest.skip(
            f"no TimescaleDB: set {TIMESCALE_URL_VAR}, or install it (`make setup` as root with"
            " ../shared/timescaledb next to the project)"
        )
    return url


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def private_broker() -> Iterator[Mosquitto]:
    """A Mosquitto of this test's own (configured as the stack's), for tests that restart it.

    Its home is under the project, not /tmp/pytest-of-root: the broker's user must reach it.
    """
    home = ROOT / ".thermoflow" / f"mosquitto-{uuid.uuid4().hex[:8]}"
    broker = Mosquitto(home=service_home(home), host="127.0.0.1", port=free_port())
    broker.up()
    yield broker
    broker.down()
    remove_home(broker.home)  # with /var/lib/thermoflow/<hash> when it went there: nothing accumulates


@pytest.fixture
def private_kafka() -> Iterator[Kafka]:
    """A one-node Kafka of this test's own, for tests that stop and restart it (an outage)."""
    home = ROOT / ".thermoflow" / f"kafka-{uuid.uuid4().hex[:8]}"
    node = Kafka(home=home, host="127.0.0.1", port=free_port(), controller_port=free_port(),
                 cache_dir=default_cache_dir(), heap="512m")  # fmt: skip
    node.up()
    yield node
    node.down()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def browser_page(request: pytest.FixtureRequest) -> AsyncIterator[BrowserPage]:
    """A page in a real headless Chromium (Debian's, see tests/support/browser.py); its screenshots
    go to ``.thermoflow/test-output/<test>/``. Fails the test, saying why, when there is no Chromium."""
    from tests.support.browser import open_page, output_dir  # Playwright only for the tests that ask

    async with open_page(output_dir(request.node.nodeid)) as page:
        yield page


def unique_name(prefix: str) -> str:
    """``test-<prefix>-<8 hex>``: each test its own topics, groups and client ids."""
    return f"test-{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, endpoints: Endpoints, database: str
) -> Iterator[ThermoflowSettings]:
    """Connection settings for this test, with a database schema of its own (dropped after, unless
    it holds an extension: :func:`thermoflow.db.drop_schema` refuses, and the test errors).
    """
    url = database_url(request, endpoints, database)
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield endpoints.settings(database_schema=schema, database_url=url)
    db.drop_schema(url, schema)


@pytest.fixture
def new_topic(endpoints: Endpoints) -> Callable[..., str]:
    """Create a fresh topic: ``new_topic("readings", partitions=12)`` returns its name."""

    def create(prefix: str, *, partitions: int = 1) -> str:
        name = unique_name(prefix)
        # Its own thread and loop, so sync and async tests alike can call it.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, ensure_topics(endpoints.settings(), {name: partitions})).result()
        return name

    return create
