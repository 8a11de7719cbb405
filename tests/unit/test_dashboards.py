"""The Grafana dashboards and their data sources, tested without Grafana or Prometheus: every
panel reads a provisioned data source, and every PromQL query of the "pipeline health"
dashboard names metrics (and labels) the components really export.

What the code exports is read from the code itself: each ``metrics.count/gauge/observe`` call
in the component modules, named the way :class:`thermoflow.metrics.Metrics` names it.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from thermoflow.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PIPELINE_HEALTH = GRAFANA / "dashboards" / "pipeline-health.json"

#: Each module that counts into a component's Metrics, and the component(s) whose registry
#: that is (``Metrics("sink")`` ...). The shared consume loop counts for each of its users.
COUNTING_MODULES: dict[str, tuple[str, ...]] = {
    "ingest/bridge.py": ("bridge",),
    "ingest/mqtt_session.py": ("bridge",),
    "ingest/delivery.py": ("bridge",),
    "ingest/records.py": ("bridge",),
    "ingest/sink.py": ("sink",),
    "processors/app.py": ("processors",),
    "alerts/store.py": ("alerts.store",),
    "alerts/notifier.py": ("alerts.notify",),
    "alerts/delivery.py": ("alerts.notify",),
    "thermoflow/consume.py": ("sink", "alerts.store", "alerts.notify"),
    "simulator/run.py": ("simulator",),
}
COMPONENT_FOLDERS = ("ingest", "processors", "alerts", "simulator", "thermoflow")
KINDS = {"count": "counter", "gauge": "gauge", "observe": "histogram"}
#: Labels Prometheus adds to every series it scrapes (deploy/prometheus/prometheus.yml).
TARGET_LABELS = {"job", "instance", "service"}
#: Series Prometheus makes itself, not the components.
PROMETHEUS_SERIES = {"up"}
ANY = "*"  # a label whose value the code computes


@dataclass
class Exported:
    """Every series name the code can export, with the label sets it uses."""

    labels: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def add(self, name: str, labels: dict[str, str]) -> None:
        self.labels.setdefault(name, []).append(labels)


def _is_metrics_call(node: ast.Call) -> str | None:
    """``self.metrics.count(...)`` and the like: the method's kind, else None."""
    func = node.func
    if not isinstance(func, ast.Attribute) or func.attr not in KINDS:
        return None
    target = ast.unparse(func.value)
    return KINDS[func.attr] if target.split(".")[-1].lstrip("_") == "metrics" else None


def _short_name(arg: ast.expr) -> str | None:
    """The short name a call counts into: a literal, or an f-string's dotted head (``delivered.``)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        head = str(arg.values[0].value)
        return head + ANY if head.endswith(".") else None
    return None


def metric_calls(path: Path) -> list[tuple[str, str, dict[str, str]]]:
    """(kind, short name, labels) of each metrics call in ``path``."""
    calls: list[tuple[str, str, dict[str, str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and (kind := _is_metrics_call(node)):
            name = _short_name(node.args[0]) if node.args else None
            assert name is not None, f"{path}:{node.lineno}: a metric name this test cannot read"
            labels = {
                kw.arg: (str(kw.value.value) if isinstance(kw.value, ast.Constant) else ANY)
                for kw in node.keywords
                if kw.arg is not None
            }
            calls.append((kind, name, labels))
    return calls


def exported() -> Exported:
    found = Exported()
    for module, components in COUNTING_MODULES.items():
        for kind, name, extra in metric_calls(ROOT / module):
            for component in components:
                family, labels = Metrics(component).family(name.replace(ANY, "x"), kind, **extra)
                if name.endswith(ANY):
                    labels["channel"] = ANY
                suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
                for suffix in suffixes:
                    found.add(family + suffix, {**labels, **({"le": ANY} if suffix == "_bucket" else {})})
    return found


def test_every_module_that_counts_is_known() -> None:
    counting = {
        str(path.relative_to(ROOT))
        for folder in COMPONENT_FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if not path.is_symlink() and metric_calls(path)
    }
    assert counting == set(COUNTING_MODULES), "a module counts metrics: add it to COUNTING_MODULES"


def test_the_reading_of_the_code_finds_what_the_components_export() -> None:
    """The scan is no sieve: families the issue asks for are there, under their real names."""
    names = exported().labels
    for family in (
        "thermoflow_bridge_messages_total",
        "thermoflow_bridge_ack_latency_seconds_bucket",
        "thermoflow_sink_consumer_lag",
        "thermoflow_alerts_notify_circuit_breaker_state",
        "thermoflow_alerts_notify_notifications_total",
        "thermoflow_processors_dead_letters_total",
    ):
        assert family in names, family
    assert {"outcome": "delivered", "channel": ANY} in names["thermoflow_alerts_notify_notifications_total"]


def dashboard(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # rows
    return found


def provisioned_datasources() -> dict[str, str]:
    """uid → type of every data source Grafana is provisioned with."""
    sources: dict[str, str] = {}
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yaml"):
        for source in yaml.safe_load(path.read_text())["datasources"]:
            sources[source["uid"]] = source["type"]
    return sources


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_reads_a_provisioned_datasource(path: Path) -> None:
    sources = provisioned_datasources()
    for panel in panels(dashboard(path)):
        for ref in [panel.get("datasource"), *(t.get("datasource") for t in panel.get("targets", []))]:
            if ref is None:
                continue
            assert sources.get(ref["uid"]) == ref["type"], f"{path.name}: {panel['title']}: {ref}"


def test_the_prometheus_datasource_is_the_compose_prometheus() -> None:
    sources = [
        source
        for path in (GRAFANA / "provisioning" / "datasources").glob("*.yaml")
        for source in yaml.safe_load(path.read_text())["datasources"]
        if source["type"] == "prometheus"
    ]
    (source,) = sources
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    published = compose["services"]["prometheus"]["ports"][0].split(":")[-1]
    assert source["url"] == f"http://prometheus:{published}"


_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
#: PromQL words that look like names: functions, aggregations, keywords.
_PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "le", "topk", "bottomk", "delta", "deriv", "abs", "clamp_min", "clamp_max", "offset",
}  # fmt: skip


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"]) for panel in panels(board) for target in panel.get("targets", [])
    ]


def series_in(expr: str) -> list[tuple[str, dict[str, str]]]:
    """Each series selector of a PromQL expression: (metric name, {label: value it matches})."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    without_groupings = _GROUPING.sub("", without_ranges)
    names = [
        match.group(1)
        for match in _SELECTOR.finditer(re.sub(r"\{[^}]*\}", "", without_groupings))
        if match.group(1) not in _PROMQL_WORDS and not re.fullmatch(r"[0-9.]+", match.group(1))
    ]
    selectors = dict(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})", expr))
    return [(name, dict((k, v) for k, _op, v in _MATCHER.findall(selectors.get(name, "")))) for name in names]


def test_the_pipeline_health_dashboard_covers_what_the_issue_asks() -> None:
    titles = " / ".join(panel["title"].lower() for panel in panels(dashboard(PIPELINE_HEALTH)))
    for topic in ("rates per hop", "lag", "dead letters", "latency", "circuit breakers"):
        assert topic in titles, topic
    exprs = " ".join(expr for _title, expr in queries(dashboard(PIPELINE_HEALTH)))
    assert "histogram_quantile(0.99" in exprs and "histogram_quantile(0.5" in exprs


def test_every_query_names_metrics_and_labels_the_code_exports() -> None:
    code = exported().labels
    problems = []
    checked = 0
    for title, expr in queries(dashboard(PIPELINE_HEALTH)):
        grouped = {
            label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()
        }
        for name, matchers in series_in(expr):
            checked += 1
            if name in PROMETHEUS_SERIES:
                continue
            label_sets = code.get(name)
            if label_sets is None:
                problems.append(f"{title}: {name} is no metric the code exports")
                continue
            known = {key for labels in label_sets for key in labels} | TARGET_LABELS
            unknown = sorted((grouped | set(matchers)) - known)
            if unknown:
                problems.append(f"{title}: {name} has no label {unknown}")
            wanted = {k: v for k, v in matchers.items() if k not in TARGET_LABELS}
            if wanted and not any(
                all(labels.get(k) in (v, ANY) for k, v in wanted.items()) for labels in label_sets
            ):
                problems.append(f"{title}: {name}{wanted} matches no series the code exports")
    assert not problems, "\n".join(problems)
    assert checked >= 20  # the parser found the queries' selectors


def test_the_check_catches_a_misspelt_metric_or_label_value() -> None:
    assert series_in('sum by (le) (rate(thermoflow_sink_rowz_total{outcome="inserted"}[5m]))') == [
        ("thermoflow_sink_rowz_total", {"outcome": "inserted"})
    ]
    code = exported().labels
    assert "thermoflow_sink_rowz_total" not in code
    assert not any(labels.get("outcome") == "insertd" for labels in code["thermoflow_sink_rows_total"])


def test_grafana_loads_every_dashboard_file() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "thermoflow.yaml").read_text())
    (source,) = provider["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{source['options']['path']}:ro" in mounts
    uids = [dashboard(path)["uid"] for path in DASHBOARDS]
    assert len(set(uids)) == len(uids) and PIPELINE_HEALTH in DASHBOARDS
