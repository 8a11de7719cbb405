"""`thermoflow run`'s plan and restart policy (pure), and the supervisor on real child processes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from thermoflow.run_plan import Instance, PlanError, RestartPolicy, parse_scale, plan
from thermoflow.stack.process import pid_alive
from thermoflow.supervisor import Supervisor


def test_plan_runs_one_of_each_component_by_default() -> None:
    names = [instance.name for instance in plan(scale={})]
    assert names == ["bridge-1", "processor-1", "sink-1", "store-1", "notifier-1"]


def test_plan_scales_and_selects() -> None:
    instances = plan(scale=parse_scale(["processor=3"]), only=["processor", "sink"])
    assert [i.name for i in instances] == ["processor-1", "processor-2", "processor-3", "sink-1"]
    assert instances[0].args == ("process",)
    assert plan(scale={"store": 1}, only=["store"])[0].args == ("alerts", "store")


@pytest.mark.parametrize(
    ("values", "message"),
    [(["cruncher=2"], "COMPONENT=N"), (["processor"], "COMPONENT=N"), (["processor=-1"], "whole number")],
)
def test_bad_scale_is_named(values: list[str], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_scale(values)


def test_bad_only_and_empty_plan_are_refused() -> None:
    with pytest.raises(PlanError, match="unknown component"):
        plan(scale={}, only=["brdige"])
    with pytest.raises(PlanError, match="nothing to run"):
        plan(scale={"sink": 0}, only=["sink"])


def test_restart_backoff_grows_to_a_ceiling_and_resets_when_stable() -> None:
    policy = RestartPolicy(initial=0.5, factor=2, ceiling=4, stable_after=60)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.failures_after(previous=3, ran_for=5) == 4
    assert policy.failures_after(previous=3, ran_for=61) == 1


COMPONENT = textwrap.dedent(
    """
    import os, signal, sys, time
    marker = os.environ["MARKER"] + "." + os.environ["THERMOFLOW_INSTANCE"]
    def stop(*_):
        open(marker + ".stopped", "w").close()
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)  # before the greeting: once it is out, SIGTERM is handled
    print("hello from", sys.argv[1:], flush=True)
    if not os.path.exists(marker):
        open(marker, "w").close()
        sys.exit(3)  # crash on the first run
    while True:
        time.sleep(0.05)
    """
)


async def test_supervisor_prefixes_output_restarts_crashes_and_stops_cleanly(tmp_path: Path) -> None:
    script = tmp_path / "component.py"
    script.write_text(COMPONENT)
    status_file = tmp_path / "status.json"
    out = io.BytesIO()
    supervisor = Supervisor(
        [Instance("sink", 1), Instance("sink", 2)],
        env={**os.environ, "MARKER": str(tmp_path / "ran")},
        command=(sys.executable, str(script)),
        policy=RestartPolicy(initial=0.05),
        status_file=status_file,
        out=out,
        grace=5,
    )
    task = asyncio.create_task(supervisor.run())
    try:
        running: list[dict[str, Any]] = []
        for _ in range(1200):  # a minute at most: a loaded machine starts Python slowly
            await asyncio.sleep(0.05)
            status = json.loads(status_file.read_text()) if status_file.exists() else {}
            running = [s for s in status.get("instances", {}).values() if s["state"] == "running"]
            greeted = out.getvalue().count(b"| hello from ['sink']")
            if len(running) == 2 and all(s["restarts"] == 1 for s in running) and greeted == 4:
                break
        else:
            pytest.fail(f"instances were not restarted: {status}")
        pids = [s["pid"] for s in running]
    finally:
        supervisor.stop.set()
        code = await asyncio.wait_for(task, 30)
    assert code == 0

    lines = out.getvalue().decode().splitlines()
    assert lines.count("sink-1      | hello from ['sink']") == 2  # first run, then the restart
    assert lines.count("sink-2      | hello from ['sink']") == 2
    assert (tmp_path / "ran.1.stopped").exists() and (tmp_path / "ran.2.stopped").exists()
    assert not [pid for pid in pids if pid_alive(pid)]
    final = json.loads(status_file.read_text())["instances"]
    assert {name: s["state"] for name, s in final.items()} == {"sink-1": "stopped", "sink-2": "stopped"}
    assert {s["last_exit"] for s in final.values()} == {0}


STUBBORN = textwrap.dedent(
    """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ignores the polite stop
    print("up", flush=True)
    while True:
        time.sleep(0.05)
    """
)


async def test_a_component_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    status_file = tmp_path / "status.json"
    out = io.BytesIO()
    supervisor = Supervisor(
        [Instance("bridge", 1)], env=dict(os.environ), command=(sys.executable, str(script)),
        status_file=status_file, out=out, grace=0.5,
    )  # fmt: skip
    task = asyncio.create_task(supervisor.run())
    try:
        for _ in range(1200):
            await asyncio.sleep(0.05)
            if b"up" in out.getvalue():
                break
        pid = json.loads(status_file.read_text())["instances"]["bridge-1"]["pid"]
    finally:
        supervisor.stop.set()
        code = await asyncio.wait_for(task, 30)
    assert code == 0
    assert not pid_alive(pid)
    final = json.loads(status_file.read_text())["instances"]["bridge-1"]
    assert (final["state"], final["last_exit"]) == ("stopped", -9)


# -- `thermoflow run` as a process of its own: signals, orphans, restarts ------------------------

RUN = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from thermoflow.supervisor import Supervisor
    from thermoflow.run_plan import Instance, RestartPolicy

    component, status_file, grace = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    if os.environ.get("EXIT_WITH_PARENT"):  # what `thermoflow run --exit-with-parent` does
        import signal
        from thermoflow.supervisor import die_with_parent
        die_with_parent(signal.SIGTERM, parent=os.getppid())
    supervisor = Supervisor(
        [Instance("bridge", 1), Instance("sink", 1)], env=dict(os.environ),
        command=(sys.executable, component), status_file=status_file, grace=grace,
        policy=RestartPolicy(initial=0.05), out=sys.stdout.buffer,
    )
    sys.exit(asyncio.run(supervisor.run()))
    """
)

QUIET_COMPONENT = textwrap.dedent(
    """
    import os, signal, sys, time
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # only what the supervisor sends may stop it
    marker = os.environ["MARKER"] + "." + sys.argv[1]
    if os.environ.get("STALL_ONCE") and not os.path.exists(marker):
        open(marker, "w").close()
        print("stalling", flush=True)
        sys.exit(3)  # what thermoflow.watchdog does on a stall
    print("up", flush=True)
    while True:
        time.sleep(0.05)
    """
)


def start_run(tmp_path: Path, *, grace: float = 5, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    (tmp_path / "run.py").write_text(RUN)
    (tmp_path / "component.py").write_text(QUIET_COMPONENT)
    status_file = tmp_path / "status.json"
    with (tmp_path / "run.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "component.py"), str(status_file),
             str(grace)],
            env={**os.environ, "MARKER": str(tmp_path / "ran"), **env},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, status_file


def running_children(status_file: Path, *, count: int = 2) -> list[int]:
    """The pids of the instances once ``count`` of them run and have greeted."""
    for _ in range(1200):  # a minute at most: a loaded machine starts Python slowly
        time.sleep(0.05)
        try:
            instances = json.loads(status_file.read_text())["instances"]
        except (OSError, ValueError):
            continue
        pids = [s["pid"] for s in instances.values() if s["state"] == "running" and s["pid"]]
        log = (status_file.parent / "run.log").read_text(errors="replace")
        if len(pids) == count and log.count("| up") >= count:
            return pids
    pytest.fail(f"the instances did not start: {status_file.read_text() if status_file.exists() else ''}")


def gone(pids: list[int]) -> list[int]:
    """Wait (a minute at most) for ``pids`` to end; returns those still alive."""
    for _ in range(600):
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_run_stops_every_child_before_run_exits(tmp_path: Path, sig: signal.Signals) -> None:
    run, status_file = start_run(tmp_path)
    children = running_children(status_file)
    run.send_signal(sig)
    assert run.wait(120) == 0
    assert [pid for pid in children if pid_alive(pid)] == []  # none outlives run
    final = json.loads(status_file.read_text())["instances"]
    assert {s["state"] for s in final.values()} == {"stopped"}


def test_children_that_ignore_sigterm_are_killed_after_the_grace_and_run_exits(tmp_path: Path) -> None:
    run, status_file = start_run(tmp_path, grace=0.5, IGNORE_TERM="1")
    children = running_children(status_file)
    run.send_signal(signal.SIGTERM)
    assert run.wait(120) == 0
    assert [pid for pid in children if pid_alive(pid)] == []
    final = json.loads(status_file.read_text())["instances"]
    assert {s["last_exit"] for s in final.values()} == {-9}


def test_a_second_signal_kills_the_children_at_once(tmp_path: Path) -> None:
    run, status_file = start_run(tmp_path, grace=3600, IGNORE_TERM="1")
    children = running_children(status_file)
    run.send_signal(signal.SIGTERM)
    for _ in range(600):
        if "stopping" in (tmp_path / "run.log").read_text(errors="replace"):
            break
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    assert run.wait(120) == 0  # without the second signal it would wait an hour
    assert [pid for pid in children if pid_alive(pid)] == []


def test_sigkill_of_run_leaves_no_orphan(tmp_path: Path) -> None:
    run, status_file = start_run(tmp_path, IGNORE_TERM="1")
    children = running_children(status_file)
    run.kill()
    run.wait(60)
    assert gone(children) == [], "children outlived a SIGKILLed `thermoflow run`"


def test_a_stalled_child_is_restarted_and_the_reason_logged(tmp_path: Path) -> None:
    run, status_file = start_run(tmp_path, STALL_ONCE="1")
    try:
        running_children(status_file)
        final = json.loads(status_file.read_text())["instances"]
        assert {s["restarts"] for s in final.values()} == {1}
        assert {s["last_exit"] for s in final.values()} == {3}
    finally:
        run.terminate()
        run.wait(120)
    log = (tmp_path / "run.log").read_text(errors="replace")
    exited = [line for line in log.splitlines() if "exited" in line and "code=3" in line]
    assert len(exited) == 2 and all("reason=stalled" in line for line in exited), log


PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    subprocess.Popen(sys.argv[1:])  # like `thermoflow demo` starting `thermoflow run`
    time.sleep(3600)
    """
)


def test_run_started_with_exit_with_parent_stops_its_children_when_the_parent_is_sigkilled(
    tmp_path: Path,
) -> None:
    """`thermoflow demo` SIGKILLed (or its terminal gone): `thermoflow run` stops, and its children."""
    (tmp_path / "run.py").write_text(RUN)
    (tmp_path / "component.py").write_text(QUIET_COMPONENT)
    (tmp_path / "parent.py").write_text(PARENT)
    status_file = tmp_path / "status.json"
    with (tmp_path / "run.log").open("wb") as log:
        parent = subprocess.Popen(
            [sys.executable, str(tmp_path / "parent.py"), sys.executable, str(tmp_path / "run.py"),
             str(tmp_path / "component.py"), str(status_file), "5"],
            env={**os.environ, "MARKER": str(tmp_path / "ran"), "EXIT_WITH_PARENT": "1"},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    children = running_children(status_file)
    supervisor_pid = json.loads(status_file.read_text())["supervisor_pid"]
    parent.kill()
    parent.wait(60)
    assert gone([supervisor_pid, *children]) == []
    final = json.loads(status_file.read_text())["instances"]
    assert {s["state"] for s in final.values()} == {"stopped"}  # a clean stop, not a kill
    assert {s["last_exit"] for s in final.values()} == {-15}


SLEEPER = textwrap.dedent(
    """
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("up", flush=True)
    while True:
        time.sleep(0.05)
    """
)


class ScriptedLag:
    """Lag that the test sets: what the supervisor's autoscaler reads instead of Kafka."""

    def __init__(self, lag: int) -> None:
        self.value = lag
        self.asked: list[tuple[str, str]] = []

    async def lag(self, group: str, topic: str) -> int:
        self.asked.append((group, topic))
        return self.value


async def test_autoscaled_instances_start_on_lag_and_retire_after_the_cool_down(tmp_path: Path) -> None:
    from thermoflow.autoscale import ScalePolicy
    from thermoflow.supervisor import Autoscaled

    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    status_file = tmp_path / "status.json"
    lag = ScriptedLag(2500)
    policy = ScalePolicy(
        min_replicas=1, max_replicas=3, lag_threshold=1000, polling_interval=0.1,
        scale_down_window=0.5, scale_down_period=0.1, cooldown_period=0.5,
    )  # fmt: skip
    supervisor = Supervisor(
        [Instance("sink", 1), Instance("sink", 2), Instance("sink", 3)],
        env=dict(os.environ),
        command=(sys.executable, str(script)),
        status_file=status_file,
        out=io.BytesIO(),
        grace=5,
        autoscaled={"sink": Autoscaled(policy=policy, group="g", topic="t")},
        lag_source=lag,
    )

    def running() -> set[str]:
        status = json.loads(status_file.read_text()) if status_file.exists() else {"instances": {}}
        return {name for name, s in status["instances"].items() if s["state"] == "running"}

    async def until(wanted: set[str]) -> None:
        for _ in range(1200):
            if running() == wanted:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"running {running()}, not {wanted}")

    task = asyncio.create_task(supervisor.run())
    try:
        await until({"sink-1", "sink-2", "sink-3"})  # ceil(2500 / 1000) = 3
        lag.value = 0
        await until({"sink-1"})  # the window passes; one goes per period, down to the minimum
        retired = json.loads(status_file.read_text())["instances"]
        assert {retired[name]["state"] for name in ("sink-2", "sink-3")} == {"retired"}
        assert {retired[name]["restarts"] for name in retired} == {0}
        lag.value = 1500
        await until({"sink-1", "sink-2"})  # a retired instance comes back when the lag does
    finally:
        supervisor.stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    assert set(lag.asked) == {("g", "t")}
    final = json.loads(status_file.read_text())
    assert not running() and final["autoscale"]["sink"]["replicas"] == 2
