"""The browser tests say plainly what is missing when there is no Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.browser import CHROMIUM_VAR, chromium_executable, output_dir


def test_a_missing_chromium_fails_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CHROMIUM_VAR, str(tmp_path / "no-chromium"))
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        chromium_executable()


def test_each_test_gets_an_empty_output_folder_named_after_it() -> None:
    first = output_dir("tests/unit/test_x.py::test_y[a/b]")
    (first / "old.png").write_bytes(b"x")
    again = output_dir("tests/unit/test_x.py::test_y[a/b]")
    assert again == first and list(again.iterdir()) == []
    assert again.name == "tests_unit_test_x.py_test_y_a_b"
    again.rmdir()
