"""The stack's pure parts: its config, what it writes for each service, its error messages."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from thermoflow.stack import ServiceError, Stack, StackConfig, process, services


def test_config_saved_and_read_back(tmp_path: Path) -> None:
    config = StackConfig(
        state_dir=tmp_path,
        mqtt_port=1,
        kafka_port=2,
        kafka_controller_port=3,
        postgres_port=4,
        readings_partitions=24,
    )
    config.save()
    assert StackConfig.saved(tmp_path) == config
    assert StackConfig.saved(tmp_path / "nothing") is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kafka_port": 1883}, "ports must differ"),
        ({"readings_partitions": 0}, "readings_partitions"),
    ],
)
def test_config_refuses_what_cannot_work(changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StackConfig(**changes)  # type: ignore[arg-type]


def test_mosquitto_is_configured_for_a_pipeline(tmp_path: Path) -> None:
    conf = Stack(StackConfig(state_dir=tmp_path)).mosquitto.config().splitlines()
    assert "max_queued_messages 0" in conf  # no per-client queue limit that drops QoS 1
    assert "set_tcp_nodelay true" in conf
    assert "persistence true" in conf
    assert "listener 1883 127.0.0.1" in conf


def test_mosquitto_saves_often_here_and_in_compose(tmp_path: Path) -> None:
    """The save interval bounds what a broker crash loses (README); compose ships the same."""
    conf = Stack(StackConfig(state_dir=tmp_path)).mosquitto.config().splitlines()
    saving = [line for line in conf if line.startswith("autosave")]
    assert saving == [f"autosave_interval {services.AUTOSAVE_INTERVAL_S}", "autosave_on_changes false"]
    assert services.AUTOSAVE_INTERVAL_S <= 1
    compose = (Path(__file__).parents[2] / "deploy" / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    assert [line for line in compose if line.startswith("autosave")] == saving


def test_kafka_is_a_single_kraft_node(tmp_path: Path) -> None:
    props = Stack(StackConfig(state_dir=tmp_path, kafka_port=19092)).kafka.server_properties()
    assert "process.roles=broker,controller" in props
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:19092" in props
    assert "offsets.topic.replication.factor=1" in props


def test_topic_partitions_follow_config(tmp_path: Path) -> None:
    stack = Stack(StackConfig(state_dir=tmp_path, readings_partitions=24))
    assert stack.topic_partitions["telemetry.readings"] == 24
    assert stack.settings().kafka_bootstrap == "127.0.0.1:9092"


def test_missing_mosquitto_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "_find", lambda *_: None)
    stack = Stack(StackConfig(state_dir=tmp_path, mqtt_port=1))  # nothing listens on port 1
    with pytest.raises(ServiceError, match="apt-get install mosquitto"):
        stack.mosquitto.up()


def test_missing_maven_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "_find", lambda *_: None)
    kafka = Stack(StackConfig(state_dir=tmp_path, cache_dir=tmp_path / "cache")).kafka
    with pytest.raises(ServiceError, match="apt-get install maven"):
        kafka.fetch()


def test_service_data_moves_only_where_the_service_user_cannot_reach(tmp_path: Path) -> None:
    hidden = tmp_path / "private"  # pytest's tmp folders are mode 700: the postgres user cannot enter
    hidden.mkdir(mode=0o700)
    open_dir = Path(tempfile.mkdtemp(dir="/tmp"))  # /tmp is world-traversable
    open_dir.chmod(0o755)
    try:
        if os.geteuid() == 0:
            moved = services.service_home(hidden / "postgres")
            assert moved.parent.parent == Path("/var/lib/thermoflow")
            assert moved.name == "postgres"
            assert moved == services.service_home(hidden / "postgres")  # stable: down finds it again
        else:
            assert services.service_home(hidden / "postgres") == hidden / "postgres"
        assert services.service_home(open_dir / "postgres") == open_dir / "postgres"
    finally:
        open_dir.rmdir()


def test_purge_removes_the_state_dir_and_the_service_homes_moved_out_of_it(tmp_path: Path) -> None:
    hidden = tmp_path / "private"  # mode 700: as root, the services' data moves to /var/lib/thermoflow
    hidden.mkdir(mode=0o700)
    stack = Stack(StackConfig(state_dir=hidden / "stack"))
    homes = [stack.mosquitto.home, stack.postgres.home, stack.kafka.home]
    for home in homes:
        (home / "data").mkdir(parents=True)
        (home / "data" / "file").write_text("data")
    removed = stack.purge()  # nothing runs: down has nothing to stop
    assert [home for home in homes if home.exists()] == []
    assert not (hidden / "stack").exists()
    if os.geteuid() == 0:
        assert stack.postgres.home.parent in removed  # the <hash> folder, not only what is in it
        assert not stack.postgres.home.parent.exists()


def test_remove_home_takes_the_hash_folder_and_the_empty_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "SERVICE_HOMES", tmp_path / "var-lib-thermoflow")
    first = tmp_path / "var-lib-thermoflow" / "0123456789ab" / "postgres"
    second = tmp_path / "var-lib-thermoflow" / "ba9876543210" / "mosquitto"
    for home in (first, second):
        (home / "data").mkdir(parents=True)
    assert services.remove_home(first) == [first.parent]
    assert second.exists()  # another stack's data stays
    assert services.remove_home(second) == [second.parent]
    assert not (tmp_path / "var-lib-thermoflow").exists()
    assert services.remove_home(second) == []


def test_a_service_that_exits_while_starting_fails_at_once_with_its_log(tmp_path: Path) -> None:
    log_file = tmp_path / "svc.log"
    pid = process.spawn(
        ["sh", "-c", "echo 'Address already in use'; exit 1"], pid_file=tmp_path / "pid", log_file=log_file
    )
    started = time.monotonic()
    with pytest.raises(ServiceError, match=r"(?s)svc exited while starting.*Address already in use"):
        process.wait_until(lambda: False, timeout=60, what="svc", pid=pid, log_file=log_file)
    assert time.monotonic() - started < 30, "the wait must not run out its timeout"


def test_a_timeout_names_the_last_error_and_the_log_tail(tmp_path: Path) -> None:
    log_file = tmp_path / "svc.log"
    log_file.write_text("".join(f"line {n}\n" for n in range(100)))

    def check() -> bool:
        raise ConnectionRefusedError("refused")

    with pytest.raises(ServiceError, match=r"(?s)within 0s \(last error: refused\).*line 99") as caught:
        process.wait_until(check, timeout=0.3, what="svc", log_file=log_file)
    assert "line 79" not in str(caught.value), "only the last 20 lines"


@pytest.mark.parametrize(
    "content",
    ["", "   ", "abc", "\x00\xff", "0", "-1", "-99999", "4194305", "99999999999999999999", "1e3", "12.5"],
)
def test_a_pid_file_holding_anything_but_a_live_pid_is_no_pid(tmp_path: Path, content: str) -> None:
    pid_file = tmp_path / "pid"
    pid_file.write_text(content)
    # and no OverflowError, no signal to a process group
    assert process.read_pid(pid_file, command_has="") is None


def test_a_pid_file_gives_the_live_server_it_names(tmp_path: Path) -> None:
    kafka = Stack(StackConfig(state_dir=tmp_path)).kafka  # its home stays under the state dir
    assert kafka.pid() is None  # no pid file yet
    kafka.home.mkdir(parents=True, exist_ok=True)
    props = kafka.home / "server.properties"
    # A stand-in for the JVM: what identifies the server is its properties file on the command line.
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(props)])
    try:
        (kafka.home / "kafka.pid").write_text(f"{server.pid}\n")
        assert kafka.pid() == server.pid and kafka.running()
    finally:
        server.kill()
        server.wait()
    assert kafka.pid() is None and not kafka.running()


def test_a_stale_pid_file_naming_another_live_process_is_no_server_and_down_spares_it(
    tmp_path: Path,
) -> None:
    # After a reboot the pid a dead server left may be any process's: here, this test's own.
    stack = Stack(StackConfig(state_dir=tmp_path))
    for service, pid_file in ((stack.kafka, "kafka.pid"), (stack.mosquitto, "mosquitto.pid")):
        service.home.mkdir(parents=True, exist_ok=True)
        (service.home / pid_file).write_text(f"{os.getpid()}\n")
        assert service.pid() is None and not service.running()
        service.down()  # would have sent SIGTERM to this process
        assert not (service.home / pid_file).exists()
