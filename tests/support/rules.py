"""Rules files for tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from thermoflow.rules import DEFAULT_RULES_FILE, thresholds_only


def thresholds_only_rules(path: Path) -> Path:
    """Write the shipped rules without their detector keys to ``path``: for tests of the threshold
    incidents alone, whose devices hold a value (stuck) or jump (rate, outlier) on purpose."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(thresholds_only(yaml.safe_load(DEFAULT_RULES_FILE.read_text()))))
    return path
