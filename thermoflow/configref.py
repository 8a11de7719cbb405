"""The configuration reference, generated from the settings classes (docs/configuration.md).

Regenerate with ``python -m thermoflow.configref > docs/configuration.md``; a unit test
fails when the committed file is out of date.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from thermoflow.settings import ThermoflowSettings

#: (title, module) of each component's settings, in pipeline order.
COMPONENT_SETTINGS = (
    ("bridge (`thermoflow bridge`) and sink (`thermoflow sink`)", "thermoflow.ingest.settings"),
    ("processors (`thermoflow process`)", "thermoflow.processors.settings"),
    ("alerts (`thermoflow alerts store`, `thermoflow alerts notify`)", "thermoflow.alerts.settings"),
    ("simulator (`thermoflow simulate`)", "thermoflow.simulator.settings"),
    ("operator console (`thermoflow console`)", "thermoflow.console.settings"),
)

#: The real flags of the sections whose command does not name them ``--<field>``: field -> flag,
#: and a field missing here has no flag (environment only). Other sections show ``--<field>``.
FLAGS: dict[str, dict[str, str]] = {
    "thermoflow.console.settings": {
        "console_host": "--host",
        "console_port": "--port",
        "console_users_file": "--users-file",
        "console_read_open": "--read-open/--read-closed",
        "console_rules_file": "--rules-file",
    },
}


def _settings_classes(module_name: str) -> list[type[BaseSettings]]:
    module = importlib.import_module(module_name)
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseSettings) and value.__module__ == module_name
    ]


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "(computed)"
    value: Any = field.get_default()
    if value is None:
        return ""
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    return f"`{value}`"


def _flag(name: str, flags: dict[str, str] | None) -> str:
    """The flag column: ``--<field>``, or the section's real flag, or nothing (environment only).

    >>> _flag("mqtt_url", None), _flag("console_port", FLAGS["thermoflow.console.settings"])
    ('`--mqtt-url`', '`--port`')
    >>> _flag("console_token", FLAGS["thermoflow.console.settings"])
    ''
    """
    if flags is None:
        return f"`--{name.replace('_', '-')}`"
    return f"`{flags[name]}`" if name in flags else ""


def _rows(cls: type[BaseSettings], skip: set[str], flags: dict[str, str] | None = None) -> list[str]:
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    rows = []
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        description = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `{prefix}{name.upper()}` | {_flag(name, flags)} | {_default(field)} | {description} |"
        )
    return rows


def render() -> str:
    """The whole reference as Markdown."""
    header = ["| environment variable | flag | default | meaning |", "|---|---|---|---|"]
    shared = set(ThermoflowSettings.model_fields)
    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings classes by `python -m thermoflow.configref`; do not edit by hand.",
        "Every command reads its flags first, then these environment variables, then the defaults",
        "(which point at the local stack); `thermoflow <command> --help` lists a command's flags.",
        "A setting with no flag is read from the environment only.",
        "",
        "## Shared by every component",
        "",
        *header,
        *_rows(ThermoflowSettings, set()),
    ]
    for title, module_name in COMPONENT_SETTINGS:
        flags = FLAGS.get(module_name)
        rows = [row for cls in _settings_classes(module_name) for row in _rows(cls, shared, flags)]
        lines += ["", f"## {title}", "", *header, *dict.fromkeys(rows)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
