"""One whole pipeline run: `thermoflow run` and `thermoflow simulate` as child processes.

Shared by `thermoflow demo`, the end-to-end tests and the pipeline benchmark. A run either
uses the default names (the demo: topics, groups and the public schema a user would see) or
isolated ones (tests, benchmarks: its own MQTT topic prefix, Kafka topics, consumer groups,
database schema and MQTT client ids, so runs never see each other's data).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thermoflow import db, kafka
from thermoflow.settings import ThermoflowSettings
from thermoflow.webhook_receiver import WebhookReceiver

WEBHOOK_SECRET = "thermoflow-local-webhook"
DEFAULT_PREFIX = "sensors"


@dataclass
class PipelineRun:
    """The processes, names and notification receiver of one pipeline run."""

    settings: ThermoflowSettings
    workdir: Path
    resolve_after: float = 20.0
    mqtt_prefix: str = DEFAULT_PREFIX
    names: dict[str, str] = field(default_factory=dict)  # extra THERMOFLOW_* names (groups, ids)
    receiver: WebhookReceiver = field(default_factory=WebhookReceiver)
    output: list[str] = field(default_factory=list)
    supervisor: asyncio.subprocess.Process | None = None
    _pump: asyncio.Task[None] | None = None

    @classmethod
    def isolated(cls, base: ThermoflowSettings, workdir: Path, *, resolve_after: float) -> PipelineRun:
        """A run with names of its own, none shared with any other run."""
        run_id = uuid.uuid4().hex[:8]
        settings = base.model_copy(
            update={
                "database_schema": f"run_{run_id}",
                "readings_topic": f"run-{run_id}.readings",
                "alerts_topic": f"run-{run_id}.alerts",
                "deadletter_topic": f"run-{run_id}.deadletter",
            }
        )
        names = {
            "THERMOFLOW_MQTT_CLIENT_ID": f"run-{run_id}-bridge",
            "THERMOFLOW_SINK_GROUP": f"run-{run_id}-sink",
            "THERMOFLOW_PROCESSOR_GROUP": f"run-{run_id}-processors",
            "THERMOFLOW_STORE_GROUP": f"run-{run_id}-store",
            "THERMOFLOW_NOTIFY_GROUP": f"run-{run_id}-notify",
            "THERMOFLOW_NOTIFIER_STATE_TOPIC": f"run-{run_id}.notifier-state",
        }
        return cls(settings, workdir, resolve_after=resolve_after, mqtt_prefix=f"run-{run_id}", names=names)

    @property
    def topic_template(self) -> str:
        return f"{self.mqtt_prefix}/{{device_id}}/{{metric}}"

    @property
    def status_file(self) -> Path:
        return self.workdir / "run-status.json"

    def env(self) -> dict[str, str]:
        """The environment every child gets: connection settings, names, a short resolve_after."""
        s = self.settings
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "THERMOFLOW_MQTT_URL": s.mqtt_url,
            "THERMOFLOW_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "THERMOFLOW_DATABASE_URL": s.database_dsn,
            "THERMOFLOW_DATABASE_SCHEMA": s.database_schema,
            "THERMOFLOW_READINGS_TOPIC": s.readings_topic,
            "THERMOFLOW_ALERTS_TOPIC": s.alerts_topic,
            "THERMOFLOW_DEADLETTER_TOPIC": s.deadletter_topic,
            "THERMOFLOW_MQTT_TOPICS": f"{self.mqtt_prefix}/+/temperature",
            "THERMOFLOW_TOPIC_TEMPLATE": self.topic_template,
            "THERMOFLOW_RESOLVE_AFTER": str(self.resolve_after),
            "THERMOFLOW_SWEEP_INTERVAL": "1",
            "THERMOFLOW_WEBHOOK_URL": self.receiver.url,
            "THERMOFLOW_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "THERMOFLOW_NOTIFY_LOG": "false",
            **self.names,
        }

    def simulator_env(self) -> dict[str, str]:
        """The children's environment without THERMOFLOW_HTTP_PORT: that port (a base the run counts
        up from for its instances) is the first instance's, so a simulator serving /metrics there
        would fail to bind it (a run on another port base than the default, beside other runs)."""
        env = self.env()
        env.pop("THERMOFLOW_HTTP_PORT", None)
        return env

    async def start(self, *run_args: str, timeout: float = 90.0) -> None:
        """Create topics and schema, start `thermoflow run`, wait until the bridge and sink are up."""
        await asyncio.to_thread(self.workdir.mkdir, parents=True, exist_ok=True)
        await self.receiver.start()
        s = self.settings
        await kafka.ensure_topics(s, {s.readings_topic: 12, s.alerts_topic: 6, s.deadletter_topic: 3})
        await asyncio.to_thread(db.migrate, s)
        self.supervisor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "thermoflow", "run",
            "--status-file", str(self.status_file), "--grace", "20", *run_args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, env=self.env(), start_new_session=True,
        )  # fmt: skip
        self._pump = asyncio.create_task(self._keep_output())
        # A message published before the bridge's first subscription would have nowhere to go.
        await self.wait_for_output("mqtt_subscribed", timeout=timeout)
        await self.wait_for_output("sink_started", timeout=timeout)

    async def _keep_output(self) -> None:
        assert self.supervisor is not None and self.supervisor.stdout is not None
        with (self.workdir / "pipeline.log").open("w") as log:
            while line := await self.supervisor.stdout.readline():
                text = line.decode(errors="replace")
                self.output.append(text)
                log.write(text)
                log.flush()

    async def wait_for_output(self, needle: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in line for line in self.output):
                return
            if self.supervisor is not None and self.supervisor.returncode is not None:
                break
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"no {needle!r} from the pipeline within {timeout:.0f}s; see {self.workdir}/pipeline.log"
        )

    def pids(self) -> dict[str, int]:
        """The pid of each supervised instance (``processor-1`` ...) now."""
        instances = json.loads(self.status_file.read_text())["instances"]
        return {name: state["pid"] for name, state in instances.items() if state["pid"]}

    def instances(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.status_file.read_text())["instances"]
        return loaded

    async def simulate(
        self, *args: str, measure: bool = True, report: Path | None = None, log_name: str = "simulator.log"
    ) -> dict[str, Any]:
        """Run `thermoflow simulate ARGS [--measure]` against this run; returns its JSON report."""
        report = report or self.workdir / "report.json"
        s = self.settings
        with (self.workdir / log_name).open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "thermoflow", "simulate", *args,
                "--incident-gap", str(self.resolve_after), "--topic-template", self.topic_template,
                "--client-prefix", f"{self.mqtt_prefix}-sim",
                "--readings-topic", s.readings_topic, "--alerts-topic", s.alerts_topic,
                "--deadletter-topic", s.deadletter_topic, "--measure" if measure else "--no-measure",
                "--report", str(report), "--quiet",
                stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                env=self.simulator_env(),
            )  # fmt: skip
            try:
                code = await proc.wait()
            except asyncio.CancelledError:  # the caller gave up on the fleet: so does the fleet
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise
        if code != 0:
            tail = (self.workdir / log_name).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"thermoflow simulate exited {code}:\n{tail}")
        loaded: dict[str, Any] = json.loads(report.read_text())
        return loaded

    async def stop(self, *, timeout: float = 60.0) -> int | None:
        """SIGTERM `thermoflow run` (it stops every component); returns its exit code."""
        code = None
        if self.supervisor is not None and self.supervisor.returncode is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(self.supervisor.wait(), timeout)
            except TimeoutError:
                os.killpg(self.supervisor.pid, signal.SIGKILL)
                code = await self.supervisor.wait()
        elif self.supervisor is not None:
            code = self.supervisor.returncode
        if self._pump is not None:
            await self._pump
        await self.receiver.stop()
        return code

    def drop_schema(self) -> None:
        """Remove an isolated run's tables (never a schema holding an extension: :func:`db.drop_schema`)."""
        db.drop_schema(self.settings.database_dsn, self.settings.database_schema)
