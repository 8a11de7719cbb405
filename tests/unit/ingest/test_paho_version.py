"""The paho adapter's version check, its pin, and that it stays the one module on paho's internals."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from thermoflow.ingest.mqtt_reader import PAHO_VERSIONS, IncompatiblePaho, check_paho_version
from thermoflow.settings import ConfigError

ROOT = Path(__file__).resolve().parents[3]
#: paho-mqtt's private names the adapter relies on (its docstring lists them).
PAHO_PRIVATES = (
    "_sock_recv", "_sock_close", "_in_packet", "_packet_handle", "_loop_rc_handle", "_out_packet",
    "_ping_t", "_last_bytes_received", "_last_msg_out",
)  # fmt: skip


def installed(found: str | None) -> object:
    def lookup(name: str) -> str:
        assert name == "paho-mqtt"
        if found is None:
            raise PackageNotFoundError(name)
        return found

    return lookup


def test_the_locked_version_and_its_patch_releases_pass() -> None:
    check_paho_version()  # the installed set (requirements.lock)
    check_paho_version(installed("2.2.0"))  # type: ignore[arg-type]
    check_paho_version(installed("2.2.7"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("found", "named"),
    [
        ("2.3.0", "paho-mqtt 2.3.0"),
        ("3.0.0", "paho-mqtt 3.0.0"),
        ("2.1.0", "paho-mqtt 2.1.0"),
        ("1.6.1", "paho-mqtt 1.6.1"),
        (None, "paho-mqtt not installed"),
    ],
)
def test_another_version_fails_at_start_up_naming_it_and_what_to_run(found: str | None, named: str) -> None:
    with pytest.raises(IncompatiblePaho) as failure:
        check_paho_version(installed(found))  # type: ignore[arg-type]
    message = str(failure.value)
    assert named in message and "paho-mqtt>=2.2,<2.3" in message
    assert "requirements.lock" in message and "tests/integration/ingest" in message
    assert isinstance(failure.value, ConfigError)  # the CLI reports it as a configuration error


def test_the_pin_in_pyproject_is_the_range_the_check_accepts() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [paho] = [Requirement(text) for text in project["dependencies"] if text.startswith("paho-mqtt")]
    low, high = (".".join(map(str, bound)) for bound in PAHO_VERSIONS)
    assert paho.specifier == Requirement(f"paho-mqtt>={low},<{high}").specifier


def test_no_other_module_touches_pahos_internals() -> None:
    pattern = re.compile(r"\.(" + "|".join(PAHO_PRIVATES) + r")\b")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("thermoflow", "ingest", "processors", "alerts", "simulator")
        for path in (ROOT / folder).glob("**/*.py")
        if path.name != "mqtt_reader.py" and not path.is_symlink()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_the_bridge_module_stays_in_parts_under_300_lines() -> None:
    # Issue 12 split the bridge (Kafka side, MQTT session, reader, ack line) so bridge.py reads
    # in one sitting; a feature that needs more belongs in one of those parts.
    lines = (ROOT / "ingest" / "bridge.py").read_text().count("\n")
    assert lines < 300, f"ingest/bridge.py has {lines} lines; move the new part into its own module"
