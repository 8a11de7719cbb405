"""`thermoflow run` on the real Kafka and PostgreSQL: instances that follow the consumer lag
(``--autoscale``) and an instance whose ``/healthz`` stops answering, killed and restarted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from psycopg import sql

from tests.conftest import Endpoints, unique_name
from tests.integration.ingest.helpers import committed, env_of, ingest_settings, produce_readings
from thermoflow.events import Reading
from thermoflow.ingest.settings import IngestSettings
from thermoflow.lag import GroupLag
from thermoflow.settings import ThermoflowSettings
from thermoflow.stack.process import pid_alive

PARTITIONS = 6
T0 = float(int(time.time()) // 3600 * 3600 - 6 * 3600)


def backlog(count: int, devices: int = 500) -> list[Reading]:
    return [
        Reading(
            device_id=f"room-{i % devices:04d}",
            value=4.0 + (i % 13) / 10,
            ts=T0 + i,
            seq=i,
            received_at=T0 + i,
        )
        for i in range(count)
    ]


def sink_config(settings: ThermoflowSettings, new_topic: Callable[..., str]) -> IngestSettings:
    return ingest_settings(
        settings,
        readings_topic=new_topic("readings", partitions=PARTITIONS),
        deadletter_topic=new_topic("deadletter"),
        sink_group=unique_name("sink"),
    )


class Run:
    """A `thermoflow run` subprocess, its output, and the instances in its status file."""

    def __init__(self, proc: asyncio.subprocess.Process, status_file: Path, log: Path) -> None:
        self.proc, self.status_file, self.log = proc, status_file, log
        self.seen_replicas: list[int] = []

    def status(self) -> dict[str, Any]:
        with suppress(FileNotFoundError, json.JSONDecodeError):
            loaded: dict[str, Any] = json.loads(self.status_file.read_text())
            return loaded
        return {"instances": {}, "autoscale": {}}

    def running(self) -> dict[str, int]:
        instances = self.status()["instances"]
        return {name: s["pid"] for name, s in instances.items() if s["state"] == "running" and s["pid"]}

    async def until(self, check: Callable[[], bool], *, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            self.seen_replicas.append(len(self.running()))
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {what} within {timeout:.0f}s; status {self.status()}; see {self.log}"
                )
            await asyncio.sleep(0.2)


@asynccontextmanager
async def thermoflow_run(env: dict[str, str], workdir: Path, *args: str) -> AsyncIterator[Run]:
    status_file, log = workdir / "status.json", workdir / "run.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "thermoflow", "run", "--status-file", str(status_file), "--grace", "20",
            *args, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, env=env,
        )  # fmt: skip
        try:
            yield Run(proc, status_file, log)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 60)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def stored(settings: ThermoflowSettings) -> tuple[int, int]:
    """(rows, distinct seq) in the test schema's readings table; (0, 0) before it exists."""
    with psycopg.connect(settings.database_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f"{settings.database_schema}.readings",)).fetchone()
        if exists is None or exists[0] is None:
            return 0, 0
        row = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT seq) FROM {}.readings").format(
                sql.Identifier(settings.database_schema)
            )
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_autoscaled_sinks_rise_with_a_backlog_drain_it_and_fall_back_storing_each_reading_once(
    settings: ThermoflowSettings, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    config = sink_config(settings, new_topic)
    count = 30_000
    await produce_readings(config, config.readings_topic, backlog(count))
    # 2,000 readings per instance: the 30,000 waiting want 15 sinks, clamped to 3. A short
    # cool-down (4 s: one instance goes every 0.8 s after it) keeps the test short.
    args = ("--only", "sink", "--autoscale", "sink=1..3", "--autoscale-lag", "sink=2000")
    timing = ("--autoscale-poll", "0.5", "--autoscale-cooldown", "4")
    async with thermoflow_run(env_of(config), tmp_path, *args, *timing) as run:
        await run.until(lambda: len(run.running()) == 3, what="three sinks for the backlog")
        assert run.status()["autoscale"]["sink"]["replicas"] == 3
        await run.until(lambda: stored(config)[0] >= count, what=f"{count} rows")
        await run.until(
            lambda: run.status()["autoscale"]["sink"]["lag"] == 0 and len(run.running()) == 1,
            what="the sinks falling back to one once the lag is gone",
        )
        instances = run.status()["instances"]
        assert set(run.running()) == {"sink-1"}
        assert {instances[name]["state"] for name in ("sink-2", "sink-3")} == {"retired"}
        assert all(instances[name]["restarts"] == 0 for name in instances)  # retired, not crashed
        # The remaining sink still stores what comes (and the others' partitions moved to it).
        more = [
            Reading(
                device_id="room-late", value=5.0, ts=T0 + count + i, seq=count + i, received_at=T0 + count + i
            )
            for i in range(500)
        ]
        await produce_readings(config, config.readings_topic, more)
        await run.until(lambda: stored(config)[0] >= count + 500, what="the late readings stored")
    assert run.proc.returncode == 0
    assert stored(config) == (count + 500, count + 500)  # nothing lost, nothing doubled
    done, end = await committed(config, config.readings_topic, PARTITIONS)
    assert done == end == count + 500
    log = run.log.read_text()
    assert '"event": "autoscaled"' in log or "autoscaled" in log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def healthy(port: int) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def test_an_instance_whose_healthz_stops_answering_is_killed_and_restarted(
    settings: ThermoflowSettings, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    config = sink_config(settings, new_topic)
    port = free_port()
    env = {**env_of(config), "THERMOFLOW_HTTP_PORT": str(port)}
    async with thermoflow_run(env, tmp_path, "--only", "sink", "--health-timeout", "3") as run:
        await run.until(
            lambda: run.status()["instances"].get("sink-1", {}).get("health") == "ok",
            what="the supervisor seeing the sink's /healthz answer",
        )
        assert await healthy(port)
        hung = run.running()["sink-1"]
        os.kill(hung, signal.SIGSTOP)  # its loop answers nothing now, and its watchdog can't act
        try:
            await run.until(
                lambda: run.running().get("sink-1") not in (None, hung),
                what="the hung sink restarted",
            )
        finally:
            with suppress(ProcessLookupError):
                os.kill(hung, signal.SIGCONT)
        sink = run.status()["instances"]["sink-1"]
        assert (sink["restarts"], sink["last_reason"]) == (1, "unhealthy")
        assert not pid_alive(hung)
        deadline = time.monotonic() + 120
        while not await healthy(port):  # the new one serves on the same port
            assert time.monotonic() < deadline, f"the restarted sink's /healthz never answered; see {run.log}"
            await asyncio.sleep(0.5)
    assert '"unhealthy"' in run.log.read_text() or "unhealthy" in run.log.read_text()


async def test_group_lag_counts_what_a_group_has_not_committed(
    endpoints: Endpoints, settings: ThermoflowSettings, new_topic: Callable[..., str]
) -> None:
    topic, group = new_topic("lag", partitions=3), unique_name("lag")
    await produce_readings(settings, topic, backlog(900, devices=30))
    reader = GroupLag(settings)
    try:
        assert await reader.lag(group, topic) == 900  # no commit yet: every record waits
        consumer = AIOKafkaConsumer(bootstrap_servers=endpoints.kafka_bootstrap, group_id=group)
        await consumer.start()
        try:
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            end = (await consumer.end_offsets([partition]))[partition]
            await consumer.commit({partition: OffsetAndMetadata(end, "")})
        finally:
            await consumer.stop()
        assert 0 < end < 900
        assert await reader.lag(group, topic) == 900 - end
        assert await reader.lag(group, unique_name("no-such-topic")) == 0
    finally:
        await reader.close()
