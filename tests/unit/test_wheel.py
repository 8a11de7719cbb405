"""The wheel: one import name, `thermoflow`, with its components, data files and py.typed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (built,) = out.glob("thermoflow-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_installs_one_top_level_name(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert {name for name in top if not name.endswith(".dist-info")} == {"thermoflow"}
    (top_level,) = [name for name in wheel.namelist() if name.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["thermoflow"]


def test_the_wheel_carries_the_components_their_data_and_py_typed(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for path in (
        "thermoflow/py.typed",
        "thermoflow/ingest/bridge.py",
        "thermoflow/processors/app.py",
        "thermoflow/processors/rules.yaml",
        "thermoflow/alerts/store.py",
        "thermoflow/simulator/run.py",
        "thermoflow/rules.py",
        "thermoflow/console/templates/base.html",  # the console's pages and its vendored chart library
        "thermoflow/console/static/uPlot.iife.min.js",
        "thermoflow/console/static/uPlot.LICENSE",
        "thermoflow/console/static/overview.js",
    ):
        assert path in names, path
    assert any(name.startswith("thermoflow/migrations/") and name.endswith(".sql") for name in names)
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
