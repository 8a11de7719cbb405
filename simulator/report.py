"""The load-test report: the JSON file (``--report``), the human summary, the live view, the plot.

The JSON keys below are stable (``version`` 1); tests and `thermoflow demo` read them.
Counts are integers, rates are per second, latencies in milliseconds; a section that was
not measured is ``null``.

```
version              1
run                  {started_at, ended_at, duration_s (publishing), seed, devices, connections,
                      qos, format, topic_template, rate_per_device, target_rate, rules, incident_gap_s}
published            well-formed readings published (== publish.readings)
publish              {messages (readings + malformed), readings, malformed, offline_slots,
                      slots, target_rate, achieved_rate (messages/s), slot_rate, rate_held (bool:
                      slot_rate >= 97% of target_rate), written, acked (QoS 1), unacked_at_end,
                      resent, queued_at_end, errors, connections {target, connected_at_start,
                      connected_at_end, connect_failures, disconnects, reconnects, ramp_s},
                      ack_latency (QoS 1 publish->PUBACK percentiles), timeline [{t, written, rate,
                      due, slots, queued, unacked, connected}]}
anomalies            {by_kind {kind: count}, total, events [first 200: {kind, device_id, start_s,
                      duration_s, magnitude}]}
ground_truth         {file, rules, breaching_readings, by_severity {warning, critical}, malformed,
                      episodes {warning, critical}}
measured             bool: --measure was on
latency              null | {publish_to_bridge, publish_to_kafka, publish_to_alert, publish_to_stored}
                      each null | {p50_ms, p95_ms, p99_ms, max_ms, samples}
delivery             null | {kafka {key, expected, received, unique, lost, duplicates, unexpected,
                      lost_by_device}, database {expected, rows, unique, lost, duplicates} | {error},
                      deadletter {expected, received}, settled (bool), undecodable, foreign}
alerts               null | {received, unique, duplicates, correct, false_positives, precision,
                      episodes, detected, missed_episodes, recall, recall_by_severity {warning,
                      critical: {episodes, detected, recall}}, missed [...], false [...]}
```
(precision and recall are defined in :mod:`simulator.score`; episodes in :mod:`simulator.truth`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from simulator.publisher import Sample

REPORT_VERSION = 1


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")


def live_view(
    sample: Sample | None, *, target_rate: float, duration: float | None, connections: int, phase: str
) -> Group:
    """What the progress display shows, refreshed every second."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("phase", phase)
    if sample is not None:
        share = sample.slots / sample.due if sample.due else 1.0
        behind = "" if share >= 0.97 else f"  [red]behind: {sample.due - sample.slots} slots[/red]"
        total = f" / {duration:.0f}s" if duration else ""
        table.add_row("elapsed", f"{sample.t:.0f}s{total}")
        table.add_row("rate", f"{sample.written:,}/s (target {target_rate:,.0f}/s){behind}")
        table.add_row("readings", f"{sample.readings:,}")
        table.add_row("connections", f"{sample.connected:,} / {connections:,}")
        table.add_row("queued / unacked", f"{sample.queued:,} / {sample.unacked:,}")
    return Group(Text("thermoflow simulate", style="bold cyan"), table)


def _ms(hop: dict[str, Any] | None) -> str:
    if not hop:
        return "-"
    return "  ".join(f"{name} {hop[name + '_ms']:.1f}" for name in ("p50", "p95", "p99", "max")) + " ms"


def print_summary(console: Console, report: dict[str, Any]) -> None:
    """The human summary at the end of a run."""
    run, publish = report["run"], report["publish"]
    table = Table(title="thermoflow simulate", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    held = "[green]held[/green]" if publish["rate_held"] else "[red]NOT held[/red]"
    table.add_row(
        "publish",
        f"{publish['messages']:,} messages in {run['duration_s']:.1f}s = {publish['achieved_rate']:,.0f}/s"
        f" (target {publish['target_rate']:,.0f}/s: {held}), QoS {run['qos']}, {run['format']}",
    )
    table.add_row("readings", f"{publish['readings']:,} well-formed, {publish['malformed']:,} malformed")
    conns = publish["connections"]
    table.add_row(
        "connections",
        f"{conns['connected_at_start']:,}/{conns['target']:,} up, {conns['disconnects']} disconnects,"
        f" {conns['reconnects']} reconnects, {conns['connect_failures']} failed attempts",
    )
    if run["qos"] == 1:
        table.add_row(
            "acks",
            f"{publish['acked']:,} acked, {publish['unacked_at_end']:,} unacked at end,"
            f" {publish['resent']} resent",
        )
        table.add_row("publish->puback", _ms(publish["ack_latency"]))
    anomalies = report["anomalies"]
    kinds = ", ".join(f"{k} {n}" for k, n in anomalies["by_kind"].items() if n) or "none"
    table.add_row("anomalies", kinds)
    truth = report["ground_truth"]
    table.add_row(
        "ground truth",
        f"{truth['breaching_readings']:,} breaching readings, episodes:"
        f" warning {truth['episodes']['warning']}, critical {truth['episodes']['critical']}",
    )
    if report["measured"]:
        latency = report["latency"] or {}
        for hop in ("publish_to_bridge", "publish_to_kafka", "publish_to_alert", "publish_to_stored"):
            table.add_row(hop.replace("_", " "), _ms(latency.get(hop)))
        delivery = report["delivery"] or {}
        k = delivery.get("kafka") or {}
        table.add_row(
            "kafka",
            f"{k.get('unique') if k.get('unique') is not None else k.get('received')}/{k.get('expected')}"
            f" readings, lost {k.get('lost')}, duplicates {k.get('duplicates')}",
        )
        d = delivery.get("database") or {}
        if "error" in d:
            table.add_row("database", str(d["error"]))
        else:
            table.add_row(
                "database",
                f"{d.get('unique')}/{d.get('expected')} rows, lost {d.get('lost')},"
                f" duplicates {d.get('duplicates')}",
            )
        dl = delivery.get("deadletter") or {}
        table.add_row("dead letters", f"{dl.get('received')}/{dl.get('expected')}")
        alerts = report["alerts"] or {}
        table.add_row(
            "alerts",
            f"{alerts.get('unique')} unique ({alerts.get('duplicates')} duplicates),"
            f" precision {alerts.get('precision')}, recall {alerts.get('recall')}"
            f" ({alerts.get('missed_episodes')} missed episodes)",
        )
    console.print(table)


def plot(path: Path, report: dict[str, Any], latency_series: dict[str, list[tuple[float, float]]]) -> None:
    """Rate and per-second p99 latency over time as a PNG; needs matplotlib (the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'thermoflow[plot]'") from exc
    timeline = report["publish"]["timeline"]
    t = [s["t"] for s in timeline]
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    axes[0].plot(t, [s["rate"] for s in timeline], label="achieved msg/s")
    axes[0].axhline(report["publish"]["target_rate"], color="grey", linestyle="--", label="target")
    axes[0].set_ylabel("messages / s")
    axes[0].legend(loc="lower right")
    for name, series in latency_series.items():
        if series:
            axes[1].plot([a for a, _ in series], [b for _, b in series], label=f"{name} p99")
    axes[1].set_ylabel("latency, ms")
    axes[1].set_xlabel("seconds since start")
    if any(latency_series.values()):
        axes[1].legend(loc="upper right")
    run = report["run"]
    fig.suptitle(
        f"thermoflow simulate: {run['devices']} devices, {run['connections']} connections, QoS {run['qos']}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
