"""The load-test report: the JSON file (``--report``), the human summary, the live view, the plot.

The JSON keys below are stable (``version`` 1); tests and `thermoflow demo` read them.
Counts are integers, rates per second, times epoch seconds, latencies milliseconds; a
section that was not measured is ``null``. "Readings" are well-formed messages with a
``seq``; "malformed" messages are the garbage of the malformed-payload anomaly.

```
version                       1
run.started_at / ended_at     when publishing started / ended
run.duration_s                seconds of publishing
run.seed, devices, connections, qos, format, topic_template, rate_per_device, target_rate,
run.rules, incident_gap_s     the settings the run used
published                     readings published (== publish.readings)
publish.messages              readings + malformed
publish.readings, malformed
publish.offline_slots         (device, tick) slots skipped by dropouts
publish.slots                 slots taken; slots == messages + offline_slots
publish.target_rate           slots per second asked for
publish.achieved_rate         messages per second published
publish.slot_rate             slots per second taken
publish.rate_held             slot_rate >= 97% of target_rate
publish.written               publishes handed to the sockets (QoS 1: first sends)
publish.acked                 QoS 1 PUBACKs (0 at QoS 0)
publish.resent                QoS 1 publishes sent again (DUP) after a reconnect
publish.unacked_at_end, queued_at_end
publish.errors                publishes not delivered when the run ended (queued + unacked)
publish.drained, drain_s      whether / how long until nothing was queued and everything was
                              acked (QoS 1) or taken by the kernel (QoS 0)
publish.connections           {target, connected_at_start, connected_at_end, connect_failures,
                               disconnects, reconnects, ramp_s}
publish.ack_latency           QoS 1 publish -> PUBACK percentiles (see latency.*), or null
publish.timeline              per second: {t, written, rate, due, slots, queued, unacked, connected}
anomalies.by_kind             {spike, drift, stuck, dropout, flapping, malformed: count started}
anomalies.total, events       total started; events: the first 200 {kind, device_id, start_tick, end_tick,
                              start_s, duration_s, magnitude}
ground_truth.kept             False when nothing was to be written (no --report, --ground-truth or
                              --measure): then only the counts below, and episodes are null
ground_truth.file             the ground-truth JSON (simulator.truth.TruthFile), or null
ground_truth.rules            the rules file used
ground_truth.breaching_readings, by_severity {warning, critical}, malformed
ground_truth.episodes         {warning, critical}: episodes per level (simulator.truth)
measured                      whether --measure was on
latency                       null, or per hop {p50_ms, p95_ms, p99_ms, max_ms, samples} | null:
  .publish_to_bridge          reading.received_at - ts
  .publish_to_kafka           readings record timestamp - ts
  .publish_to_alert           alerts record timestamp - reading_ts
  .publish_to_stored          readings row stored_at - ts
  .bridge_to_kafka            readings record timestamp - reading.received_at (the bridge's own share)
  .kafka_to_alert             alerts record timestamp - its reading's record timestamp (the processor's)
delivery                      null, or:
  .kafka                      {key ("seq" | "ts" | "count"), expected, received, unique, lost,
                               duplicates, unexpected, lost_by_device {device_id: n}}
  .database                   {expected, rows, unique, lost, duplicates} or {error}
  .deadletter                 {expected (malformed sent), received (dead letters from our topics)}
  .settled                    the pipeline caught up before the wait ended: everything expected
                              arrived and its consumer groups committed all (see measure.py)
  .consumer_lag               {group: records not committed} of the groups active on the readings
                              topic during the run (processors, sink), when the wait ended
  .undecodable, foreign       records that did not decode / were not this run's
alerts                        null, or the threshold rule implementation vs its scalar reference (the
                              above/below alerts only): {received, unique, duplicates, correct,
                              false_positives, precision, episodes, detected, missed_episodes, recall,
                              recall_by_severity {warning, critical: {episodes, detected, recall}},
                              missed [first 50 episodes], false [first 50 alerts]}
anomaly_detection             null when no ground truth was kept; else what the alerts caught of the
                              injected anomalies (malformed aside):
  .measured                   whether incidents were read (--measure); if not, every detected, recall,
                              delay, incidents and false_incidents below is null
  .grace_s                    an incident detects an anomaly when opened in [start, end + grace_s]
  .incident_gap_s             alerts of one (device, rule, kind) this close are one incident
  .detectors                  {rule_id: {offline_after, stuck {tolerance, for}, rate {window, warning,
                              critical}, outlier {window, warning, critical, min_abs_deviation}}} as
                              read from the rules file; null: that detector is off
  .predicates                 {spike, drift, stuck, dropout, flapping: when one is detectable, in words}
  .accepts                    {kind: [the incident conditions that detect it]}
  .by_kind                    {spike, drift, stuck, dropout, flapping: {injected, detectable, detected,
                              detected_detectable, recall_detectable (detected_detectable / detectable),
                              recall_all (detected / injected), delay (an accepted incident opened,
                              or one already open taking an alert, - anomaly start: {p50_ms, p95_ms,
                              p99_ms, max_ms, samples} | null)}}
  .total                      the same over the five kinds
  .incidents                  device incidents considered (derived from the alerts)
  .false_incidents            {count, device_hours, per_1000_device_hours, first [first 50
                              {device_id, condition, opened_at}]}: opened inside no anomaly's window
  .missed                     first 50 detectable anomalies not detected {kind, device_id, start_at,
                              duration_s, magnitude}
  .excluded                   {malformed: n}: no device condition; see delivery.deadletter
```
Precision and recall are defined in :mod:`thermoflow.simulator.score`, episodes in
:mod:`thermoflow.simulator.truth`, detectability in :mod:`thermoflow.simulator.detectability`,
detection in :mod:`thermoflow.simulator.detection`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from thermoflow.simulator.publisher import Sample

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
        table.add_row("rate", f"{sample.rate:,.0f}/s (target {target_rate:,.0f}/s){behind}")
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
        hops = ("publish_to_bridge", "publish_to_kafka", "publish_to_alert", "publish_to_stored")
        for hop in (*hops, "bridge_to_kafka", "kafka_to_alert"):
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
            "threshold rules vs scalar reference",
            f"{alerts.get('unique')} unique alerts ({alerts.get('duplicates')} duplicates),"
            f" precision {alerts.get('precision')}, recall {alerts.get('recall')}"
            f" ({alerts.get('missed_episodes')} missed episodes)",
        )
    console.print(table)
    if report.get("anomaly_detection"):
        console.print(detection_table(report["anomaly_detection"]))


def _recall(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def detection_table(section: dict[str, Any]) -> Table:
    """``anomaly_detection`` as a table: one row per anomaly kind, then the total and the false incidents."""
    table = Table(title="anomaly detection (incidents vs injected anomalies)", title_justify="left")
    for name in (
        "kind",
        "injected",
        "detectable",
        "detected",
        "recall detectable",
        "recall all",
        "delay p50 / p99",
    ):
        table.add_column(name, justify="left" if name == "kind" else "right")
    for kind, row in [*section["by_kind"].items(), ("total", section["total"])]:
        delay = row["delay"]
        table.add_row(
            kind,
            str(row["injected"]),
            str(row["detectable"]),
            "-" if row["detected"] is None else str(row["detected"]),
            _recall(row["recall_detectable"]),
            _recall(row["recall_all"]),
            "-" if not delay else f"{delay['p50_ms'] / 1000:.1f} / {delay['p99_ms'] / 1000:.1f} s",
        )
    false = section["false_incidents"]
    if false is not None:
        table.caption = (
            f"false incidents: {false['count']} ({false['per_1000_device_hours']} per 1,000 device-hours);"
            f" grace {section['grace_s']:g} s"
        )
    return table


def detection_summary(section: dict[str, Any] | None) -> dict[str, str]:
    """``anomaly_detection`` as label/value rows (`thermoflow demo`'s summary); empty when not measured.

    >>> row = {"injected": 10, "detectable": 8, "detected": 7, "detected_detectable": 7,
    ...        "recall_detectable": 0.875, "recall_all": 0.7, "delay": {"p50_ms": 31000.0, "p99_ms": 32500.0}}
    >>> rows = detection_summary({"measured": True, "by_kind": {"dropout": row},
    ...     "false_incidents": {"count": 1, "per_1000_device_hours": 150.0}})
    >>> list(rows)
    ['anomalies caught: dropout', 'false incidents per 1,000 device-hours']
    >>> for value in rows.values(): print(value)
    7/10, detectable 8: recall 0.88 detectable / 0.70 all, delay p50/p99 31.0/32.5 s
    150.0 (1)
    """
    if not section or not section.get("measured"):
        return {}
    rows: dict[str, str] = {}
    for kind, row in section["by_kind"].items():
        delay = row["delay"]
        timing = "-" if not delay else f"{delay['p50_ms'] / 1000:.1f}/{delay['p99_ms'] / 1000:.1f} s"
        rows[f"anomalies caught: {kind}"] = (
            f"{row['detected']}/{row['injected']}, detectable {row['detectable']}:"
            f" recall {_recall(row['recall_detectable'])} detectable / {_recall(row['recall_all'])} all,"
            f" delay p50/p99 {timing}"
        )
    false = section["false_incidents"]
    rows["false incidents per 1,000 device-hours"] = f"{false['per_1000_device_hours']} ({false['count']})"
    return rows


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
