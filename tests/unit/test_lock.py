"""requirements.lock: every dependency pinned, within pyproject's bounds, and installed as pinned."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"not pinned exactly: {line}"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return [Requirement(text) for text in declared]


def test_every_declared_dependency_is_pinned_within_its_bounds() -> None:
    pins = _locked()
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {requirement}: run `make lock`"
        )


def test_the_environment_is_the_locked_set() -> None:
    mismatched = {
        name: (version, metadata.version(name))
        for name, version in _locked().items()
        if metadata.version(name) != version
    }
    assert not mismatched, f"installed differs from requirements.lock (pinned, installed): {mismatched}"
