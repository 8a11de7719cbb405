"""Every Grafana panel's SQL runs against the pipeline's real schema, Grafana's macros substituted."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.conftest import ROOT
from thermoflow import db
from thermoflow.settings import ThermoflowSettings

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "thermoflow.json"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def substitute_macros(query: str, start: str = "now() - interval '6 hours'", end: str = "now()") -> str:
    """What Grafana's PostgreSQL data source does to a panel's SQL before sending it.

    ``start`` and ``end`` are the dashboard's range as SQL (Grafana sends timestamp literals).
    """

    def time_group(match: re.Match[str]) -> str:
        column, interval = match.group(1).strip(), match.group(2)
        seconds = int(interval[:-1]) * UNITS[interval[-1]]
        return f'to_timestamp(floor(extract(epoch from {column}) / {seconds}) * {seconds}) AS "time"'

    query = query.replace("$__interval_ms", "20000").replace("$__interval", "'20s'")  # 6 hours, 1,080 px
    query = query.replace("$__range_s", "21600")
    query = re.sub(r"\$__timeGroupAlias\(([^,]+),\s*'(\d+[smhd])'\)", time_group, query)
    query = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1)} BETWEEN {start} AND {end}", query)
    query = query.replace("$__timeFrom()", f"({start})").replace("$__timeTo()", f"({end})")
    query = query.replace("${device:sqlstring}", "'freezer-0001','rack-0002'")
    assert "$" not in query, f"a macro this test does not know: {query}"
    return query


def panel_queries() -> list[tuple[str, str]]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    queries = [(p["title"], t["rawSql"]) for p in dashboard["panels"] for t in p["targets"]]
    queries += [(f"variable {v['name']}", v["query"]) for v in dashboard["templating"]["list"]]
    return queries


def test_dashboard_is_provisioned_from_the_file() -> None:
    provider = (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "thermoflow.yaml").read_text()
    assert "/var/lib/grafana/dashboards" in provider
    assert {"Open incidents", "Alert rate (per minute, by severity)", "Temperature per device (°C)"} <= {
        title for title, _ in panel_queries()
    }


@pytest.mark.parametrize(("title", "query"), panel_queries(), ids=[t for t, _ in panel_queries()])
def test_panel_sql_runs_on_the_pipeline_schema(settings: ThermoflowSettings, title: str, query: str) -> None:
    db.migrate(settings)
    now = time.time()
    with db.connect(settings) as conn:
        conn.execute(
            "INSERT INTO readings (device_id, metric, ts, value, seq, received_at)"
            " SELECT d, 'temperature', to_timestamp(%s - g), -18 + g / 100.0, g, to_timestamp(%s - g)"
            " FROM unnest(ARRAY['freezer-0001', 'rack-0002']) d, generate_series(0, 299) g",
            (now, now),
        )
        conn.execute(
            "INSERT INTO alert_events (alert_id, reading_ts, device_id, metric, rule_id, severity, condition,"
            " threshold, value, detected_at) VALUES ('a1', to_timestamp(%s), 'freezer-0001', 'temperature',"
            " 'freezer', 'critical', 'above', -10, -4.2, to_timestamp(%s))",
            (now - 5, now - 5),
        )
        conn.execute(
            "INSERT INTO incidents (incident_id, device_id, rule_id, metric, condition, threshold, severity,"
            " status, opened_at, last_breach_at, peak_value, breach_count, kind) VALUES ('i1',"
            " 'freezer-0001', 'freezer', 'temperature', 'above', -10, 'critical', 'firing', to_timestamp(%s),"
            " to_timestamp(%s), -4.2, 1, 'threshold')",
            (now - 5, now - 5),
        )
        conn.commit()  # the panel runs later, in a transaction of its own (now() moves on)
        with conn.cursor() as cur:
            cur.execute(substitute_macros(query).encode())
            rows = cur.fetchall()
            columns = [c.name for c in cur.description or []]
    assert rows, f"{title}: no rows from data that should show"
    if "$__timeGroupAlias" in query:
        assert columns[0] == "time"
