"""The three services of the local stack, each a real process from the machine's packages.

Each service is ``up`` (idempotent: a running, answering service is left alone), ``down``
(leaves no process behind), ``running`` and ``ready`` (answers a real request).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import psycopg

from thermoflow.kafka import wait_for_kafka
from thermoflow.settings import ThermoflowSettings
from thermoflow.stack.process import ServiceError, read_pid, run, spawn, terminate, wait_until

KAFKA_VERSION = "4.1.1"


class Service(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...
    def up(self) -> None: ...
    def down(self) -> None: ...
    def running(self) -> bool: ...
    def ready(self) -> bool: ...
    def pid(self) -> int | None: ...


def _find(binary: str, *extra_dirs: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *extra_dirs, "/usr/sbin", "/sbin"])
    return shutil.which(binary, path=path)


def _is_root() -> bool:
    return os.geteuid() == 0


def _chown_to(path: Path, user: str) -> None:
    """Give ``path`` (recursively) to a service's system user when we run as root."""
    if not _is_root():
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, entry.pw_uid, entry.pw_gid)


#: Where a service's data goes when its system user cannot enter the stack's state directory.
SERVICE_HOMES: Final = Path("/var/lib/thermoflow")


def service_home(path: Path) -> Path:
    """Where a service that runs as its own system user keeps ``path``'s data.

    Mosquitto and PostgreSQL drop root for their own users, which must be able to reach the
    folder. When we run as root from a folder they cannot enter (a checkout under /root),
    their data goes to ``/var/lib/thermoflow/<hash of path>/`` instead; otherwise it stays put.
    """
    path = path.resolve()
    if not _is_root() or all(
        os.stat(parent).st_mode & stat.S_IXOTH for parent in path.parents if parent.exists()
    ):
        return path
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    return SERVICE_HOMES / digest / path.name


#: Seconds between Mosquitto's saves of its database. Mosquitto 2.0 keeps queued messages in
#: memory and writes its whole database on a save and on a clean stop, never per message, so a
#: crash loses what it acked since the last save. It saves once ``now > last + interval`` in
#: whole seconds: with 1, a save every 2 s at most. Measured (bench/bench_broker_persistence.py,
#: a backlog growing at 10,000/s for 30 s, kill -9): 10 s lost 8.75 s of acked messages, 1 s
#: lost 0.45 s, for 1.39x the broker's CPU and no throughput cost. Saving on changes bounds the
#: loss by a count instead, but each save rewrites the whole backlog: every 1,000 changes cost
#: 7.2x the CPU and could not keep 10,000/s, and the cost grows with the backlog.
AUTOSAVE_INTERVAL_S: Final = 1


def remove_home(home: Path) -> list[Path]:
    """Delete a service's data folder; one under ``/var/lib/thermoflow/<hash>/`` goes with its hash folder.

    Returns what was removed. ``/var/lib/thermoflow`` itself goes too once it is empty.
    """
    home = home.resolve()
    target = home.parent if home.parent.parent == SERVICE_HOMES else home
    if not target.exists():
        return []
    shutil.rmtree(target)
    if target.parent == SERVICE_HOMES:
        with contextlib.suppress(OSError):  # not empty: another stack's data
            SERVICE_HOMES.rmdir()
    return [target]


@dataclass(frozen=True)
class Mosquitto:
    """Eclipse Mosquitto, configured for a pipeline (see :meth:`config`)."""

    home: Path
    host: str
    port: int
    name: str = "mosquitto"
    #: With ``autosave_on_changes``, a save every this many changes; else every this many seconds.
    autosave_interval: int = AUTOSAVE_INTERVAL_S
    autosave_on_changes: bool = False

    @property
    def address(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def _pid_file(self) -> Path:
        return self.home / "mosquitto.pid"

    @property
    def _conf_file(self) -> Path:
        return self.home / "mosquitto.conf"

    def config(self) -> str:
        # No per-client queue limit, so a slow QoS 1 subscriber (a bridge waiting on Kafka)
        # is buffered, not dropped; a 1000-message in-flight window per MQTT 3.1.1 client
        # (MQTT 5 clients set their own receive-maximum); persistence so a persistent
        # session survives a broker restart, saved often (see AUTOSAVE_INTERVAL_S).
        return "\n".join(
            [
                "per_listener_settings false",
                f"listener {self.port} {self.host}",
                "allow_anonymous true",
                "persistence true",
                f"persistence_location {self.home / 'data'}/",
                f"autosave_interval {self.autosave_interval}",
                f"autosave_on_changes {str(self.autosave_on_changes).lower()}",
                "max_queued_messages 0",
                "max_queued_bytes 0",
                "max_inflight_messages 1000",
                "max_keepalive 65535",
                "set_tcp_nodelay true",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "connection_messages false",
                "",
            ]
        )

    def up(self) -> None:
        if self.running() and self.ready():
            return
        binary = _find("mosquitto")
        if binary is None:
            raise ServiceError(
                "mosquitto is not installed: run `make setup` (as root) or `apt-get install mosquitto`"
            )
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        conf = self._conf_file
        conf.write_text(self.config())
        _chown_to(self.home / "data", "mosquitto")
        log_file = self.home / "mosquitto.log"
        pid = spawn([binary, "-c", str(conf)], pid_file=self._pid_file, log_file=log_file)
        wait_until(self.ready, timeout=20, what=f"mosquitto on {self.address}", pid=pid, log_file=log_file)

    def down(self) -> None:
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout=10)
        self._pid_file.unlink(missing_ok=True)

    def running(self) -> bool:
        return self.pid() is not None

    def pid(self) -> int | None:
        """The server's process id, or None when it is not running."""
        return read_pid(self._pid_file, command_has=str(self._conf_file))

    def ready(self) -> bool:
        """A real MQTT 3.1.1 CONNECT answered by a CONNACK that accepts it."""
        client_id = f"thermoflow-probe-{uuid.uuid4().hex[:8]}".encode()
        variable = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
        connect = bytes([0x10, len(variable)]) + variable
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                sock.sendall(connect)
                connack = sock.recv(4)
                sock.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError:
            return False
        return connack == b"\x20\x02\x00\x00"


@dataclass(frozen=True)
class Kafka:
    """A single Apache Kafka node in KRaft mode (broker and controller), from Maven Central jars."""

    home: Path
    host: str
    port: int
    controller_port: int
    cache_dir: Path
    heap: str = "1g"
    name: str = "kafka"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def libs(self) -> Path:
        return self.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def _pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def _props_file(self) -> Path:
        return self.home / "server.properties"

    def fetch(self) -> Path:
        """Resolve Kafka's jars with Maven into the cache (once per machine); returns the folder."""
        done = self.libs / ".complete"
        if done.exists():
            return self.libs
        mvn = _find("mvn")
        if mvn is None:
            raise ServiceError("Maven (mvn) is not installed: `apt-get install maven`, or run `make setup`")
        pom = Path(__file__).with_name("kafka-pom.xml")
        self.libs.mkdir(parents=True, exist_ok=True)
        run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.libs}",
                "-DincludeScope=runtime",
                f"-Dkafka.version={KAFKA_VERSION}",
            ],
            what=f"resolving Apache Kafka {KAFKA_VERSION} jars with mvn",
        )
        done.touch()
        return self.libs

    def server_properties(self) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{self.host}:{self.controller_port}",
                f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={self.home / 'data'}",
                "num.partitions=1",
                "auto.create.topics.enable=true",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=12",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=24",
                "log.segment.bytes=268435456",
                "",
            ]
        )

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else _find("java")
        if java is None or not Path(java).exists():
            raise ServiceError("Java 17+ is not installed: `apt-get install openjdk-17-jre-headless`")
        return java

    def up(self) -> None:
        if self.running() and self.ready():
            return
        libs = self.fetch()
        java = self._java()
        self.home.mkdir(parents=True, exist_ok=True)
        props = self._props_file
        props.write_text(self.server_properties())
        classpath = f"{libs}/*"
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = _kafka_uuid()
            run(
                [
                    java,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                    "--ignore-formatted",
                ],
                what="formatting Kafka's KRaft storage",
            )
        log_file = self.home / "kafka.log"
        pid = spawn(
            [
                java,
                f"-Xms{self.heap}",
                f"-Xmx{self.heap}",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(props),
            ],
            pid_file=self._pid_file,
            log_file=log_file,
        )
        # A JVM on a loaded 2-core machine can take minutes; a Kafka that exits stops the wait.
        wait_until(
            self.ready,
            timeout=180,
            interval=0.5,
            what=f"Kafka on {self.address}",
            pid=pid,
            log_file=log_file,
        )

    def down(self) -> None:
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout=30)
        self._pid_file.unlink(missing_ok=True)

    def running(self) -> bool:
        return self.pid() is not None

    def pid(self) -> int | None:
        """The server's process id, or None when it is not running."""
        return read_pid(self._pid_file, command_has=str(self._props_file))

    def ready(self) -> bool:
        """A real metadata request answered by the broker."""
        if not _port_open(self.host, self.port):
            return False
        settings = ThermoflowSettings(kafka_bootstrap=self.address)
        try:
            asyncio.run(wait_for_kafka(settings, timeout=5))
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True)
class Postgres:
    """PostgreSQL from Debian's package: initdb into the state directory, run with pg_ctl.

    ``timescaledb``: start the server with ``shared_preload_libraries=timescaledb`` (True),
    without it (False), or with it exactly when the extension is installed (None, the default).
    A server without the preload still works: thermoflow then keeps plain tables.
    ``bin_dir``: a PostgreSQL other than the newest under ``/usr/lib/postgresql`` (tests).
    """

    home: Path
    host: str
    port: int
    user: str = "thermoflow"
    database: str = "thermoflow"
    name: str = "postgres"
    timescaledb: bool | None = None
    bin_dir: Path | None = None

    @property
    def address(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def _data(self) -> Path:
        return self.home / "data"

    def _bin(self, tool: str) -> str:
        if self.bin_dir is not None:
            return str(self.bin_dir / tool)
        versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), key=lambda p: int(p.parts[-3]))
        found = str(versions[-1]) if versions else _find(tool)
        if found is None:
            raise ServiceError(
                f"PostgreSQL's {tool} is not installed: "
                "run `make setup` (as root) or `apt-get install postgresql`"
            )
        return found

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """A private server for a ``with`` block: started, its URL, then stopped and its data removed."""
        self.up()
        try:
            yield self.address
        finally:
            self.down()
            remove_home(self.home)

    def timescaledb_installed(self) -> bool:
        """Whether this PostgreSQL has the TimescaleDB extension (its library and control file)."""
        try:
            bin_dir = Path(self._bin("postgres")).parent
        except ServiceError:
            return False
        root = bin_dir.parent  # /usr/lib/postgresql/15; Debian's share dir is /usr/share/postgresql/15
        share = root.parents[2] / "share" / "postgresql" / root.name
        return (root / "lib" / "timescaledb.so").exists() and (
            share / "extension" / "timescaledb.control"
        ).exists()

    def preloads_timescaledb(self) -> bool:
        """Whether :meth:`up` starts the server with TimescaleDB preloaded.

        Raises:
            ServiceError: TimescaleDB was asked for and is not installed.
        """
        installed = self.timescaledb_installed()
        if self.timescaledb and not installed:
            raise ServiceError(
                "TimescaleDB is not installed in this PostgreSQL: run `make setup` (as root, with"
                " ../shared/timescaledb next to the project) or start the stack without it"
            )
        return installed if self.timescaledb is None else self.timescaledb

    def timescaledb_loaded(self) -> bool:
        """Whether the running server has TimescaleDB preloaded (False when it does not answer)."""
        try:
            with psycopg.connect(self._dsn("postgres"), connect_timeout=3) as conn:
                row = conn.execute("SHOW shared_preload_libraries").fetchone()
        except psycopg.Error:
            return False
        return row is not None and "timescaledb" in (name.strip() for name in str(row[0]).split(","))

    def _as_owner(self, argv: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root; as root, run it as the package's `postgres` user.
        return ["runuser", "-u", "postgres", "--", *argv] if _is_root() else argv

    def up(self) -> None:
        if self.running() and self.ready():
            self._create_database()
            return
        self.home.mkdir(parents=True, exist_ok=True)
        if not (self._data / "PG_VERSION").exists():
            self._data.mkdir(mode=0o700, exist_ok=True)
            _chown_to(self.home, "postgres")
            run(
                self._as_owner(
                    [
                        self._bin("initdb"),
                        "-D",
                        str(self._data),
                        "-U",
                        self.user,
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--no-locale",
                    ]
                ),
                what="initdb",
                cwd=self.home,
            )
        _chown_to(self.home, "postgres")
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.home}",
                f"-c listen_addresses={self.host}",
                "-c max_connections=200",
                "-c shared_buffers=256MB",
                "-c max_wal_size=2GB",
                "-c log_min_messages=warning",
                *(["-c shared_preload_libraries=timescaledb"] if self.preloads_timescaledb() else []),
            ]
        )
        run(
            self._as_owner(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self._data),
                    "-l",
                    str(self.home / "postgres.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            what=f"starting PostgreSQL (log: {self.home}/postgres.log)",
            cwd=self.home,
        )
        wait_until(self.ready, timeout=30, what=f"PostgreSQL on {self.host}:{self.port}")
        self._create_database()

    def _create_database(self) -> None:
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def down(self) -> None:
        if self.running():
            run(
                self._as_owner([self._bin("pg_ctl"), "-D", str(self._data), "-m", "fast", "-w", "stop"]),
                what="stopping PostgreSQL",
                cwd=self.home,
            )

    def running(self) -> bool:
        return self.pid() is not None

    def pid(self) -> int | None:
        """The postmaster's process id (its backends are its children), or None when it is not running."""
        return read_pid(self._data / "postmaster.pid", command_has=str(self._data))

    def ready(self) -> bool:
        """A real query answered."""
        try:
            with psycopg.connect(self._dsn("postgres"), connect_timeout=3) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    def _dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _kafka_uuid() -> str:
    """A cluster id the way `kafka-storage random-uuid` makes one (URL-safe base64, 22 chars)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
