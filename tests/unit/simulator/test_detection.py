"""anomaly_detection: detector settings, detectability predicates, matching incidents to anomalies."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from thermoflow.events import Condition, new_alert
from thermoflow.rules import DEFAULT_RULES_FILE, NO_DETECTORS_CONFIG, load_rules
from thermoflow.rules import DetectorConfig as Detectors
from thermoflow.rules import OutlierConfig as Outlier
from thermoflow.rules import RateConfig as Rate
from thermoflow.rules import StuckConfig as Stuck
from thermoflow.simulator.anomalies import Anomaly, Injector, Kind, Schedule
from thermoflow.simulator.detectability import (
    SCORED_KINDS,
    InjectedAnomaly,
    crossed,
    detectable,
    injected_anomalies,
    judge,
    rule_detectors,
)
from thermoflow.simulator.detection import (
    ACCEPTS,
    Incident,
    anomaly_detection,
    incidents_from_alerts,
    score_detection,
)
from thermoflow.simulator.engine import Engine
from thermoflow.simulator.payloads import PayloadFormat
from thermoflow.simulator.profiles import Fleet, SignalModel
from thermoflow.simulator.report import detection_summary, detection_table
from thermoflow.simulator.truth import GroundTruth, Thresholds

OFF = NO_DETECTORS_CONFIG
GRACE = 30.0
CONDITIONS: tuple[str, ...] = ("above", "below", "offline", "stuck", "rate", "outlier")


def _anomaly(kind: Kind = "spike", **fields: Any) -> InjectedAnomaly:
    values: dict[str, Any] = {
        "kind": kind,
        "device_id": "freezer-0001",
        "rule_id": "freezer",
        "start_at": 1000.0,
        "duration_s": 1.0,
        "magnitude": 0.0,
        "start_s": 600.0,
        "period_s": 1.0,
        "noise_sigma": 0.6,
        "crossed": False,
    }
    values.update(fields)
    return InjectedAnomaly(**values)


# -- detector settings: the processors' own, from the same file ------------------------------------


def test_the_simulator_judges_by_the_detectors_the_processors_read_from_the_same_file() -> None:
    rules = load_rules(DEFAULT_RULES_FILE)
    found = rule_detectors(rules)
    assert set(found) == {rule.id for rule in rules.rules}
    assert all(found[rule.id] is rule.detectors for rule in rules.rules)
    freezer = found["freezer"]
    assert freezer.offline_after is not None and freezer.stuck is not None and freezer.rate is not None
    settings_text = anomaly_detection(
        anomalies=[], detectable=[], detectors=found, incidents=None, grace_s=GRACE,
        incident_gap_s=30.0, device_hours=1.0, excluded={},
    )["detectors"]  # fmt: skip
    assert settings_text["freezer"] == freezer.to_yaml()
    assert settings_text["freezer"]["stuck"]["for"] == freezer.stuck.stuck_for


# -- detectability ----------------------------------------------------------------------------------


ALL_ON = Detectors(
    offline_after=30.0,
    stuck=Stuck(tolerance=0.05, stuck_for=60.0),
    rate=Rate(window=60.0, limits={"warning": 1.5, "critical": 3.0}),
    outlier=Outlier(window=300.0, thresholds={"warning": 6.0, "critical": 10.0}, min_abs_deviation=3.0),
)


@pytest.mark.parametrize(
    ("anomaly", "expected"),
    [
        # dropout: silent at least offline_after, on a device seen before
        (_anomaly("dropout", duration_s=30.0), True),
        (_anomaly("dropout", duration_s=29.0), False),
        (_anomaly("dropout", duration_s=120.0, start_s=0.0), False),  # never seen: nothing to miss
        # stuck: the stuck readings span stuck_for
        (_anomaly("stuck", duration_s=61.0), True),
        (_anomaly("stuck", duration_s=60.0), False),
        # spike: k = 6 (the lowest outlier score) x noise 0.6 = 3.6 °C, and > min_abs_deviation 3
        (_anomaly("spike", magnitude=-3.7), True),
        (_anomaly("spike", magnitude=3.5), False),
        (_anomaly("spike", magnitude=3.5, noise_sigma=0.1), True),
        (_anomaly("spike", magnitude=2.9, noise_sigma=0.1), False),  # under min_abs_deviation
        (_anomaly("spike", magnitude=20.0, start_s=100.0), False),  # no baseline window yet
        (_anomaly("spike", magnitude=1.0, crossed=True), True),  # a threshold catches it
        # drift: 60 x (|M| - 2 x noise 0.6) / max(D, window 60 + step 300/32) > 1.5 °C/min
        (_anomaly("drift", magnitude=12.0, duration_s=300.0), True),  # 2.16 °C/min
        (_anomaly("drift", magnitude=12.0, duration_s=600.0), False),  # 1.08 °C/min
        (_anomaly("drift", magnitude=-3.0, duration_s=30.0), True),  # 1.8 °C over 69.4 s: 1.56 °C/min
        (_anomaly("drift", magnitude=-2.8, duration_s=30.0), False),  # 1.6 °C over 69.4 s: 1.38 °C/min
        (_anomaly("drift", magnitude=-3.0, duration_s=30.0, published_s=0.0), False),  # silent all along
        (_anomaly("drift", magnitude=12.0, duration_s=600.0, crossed=True), True),
        (_anomaly("drift", magnitude=12.0, duration_s=30.0, start_s=10.0), False),  # no 60 s anchor yet
        # flapping: only thresholds see it
        (_anomaly("flapping", magnitude=1.0, duration_s=30.0, crossed=True), True),
        (_anomaly("flapping", magnitude=1.0, duration_s=30.0), False),
    ],
)
def test_detectability_predicates_at_their_edges(anomaly: InjectedAnomaly, expected: bool) -> None:
    assert detectable(anomaly, ALL_ON) is expected


def test_without_detectors_only_threshold_crossings_are_detectable() -> None:
    crossing = [_anomaly(kind, crossed=True, duration_s=600.0, magnitude=30.0) for kind in SCORED_KINDS]
    assert [detectable(a, OFF) for a in crossing] == [True, True, False, False, True]
    quiet = [_anomaly(kind, duration_s=600.0, magnitude=30.0) for kind in SCORED_KINDS]
    assert not any(detectable(a, OFF) for a in quiet)
    assert all(detectable(a, ALL_ON) for a in quiet if a.kind != "flapping")
    # A device whose rule has no entry (or no rule at all) has no detectors.
    assert judge([_anomaly("dropout", duration_s=60.0, rule_id=None)], {"freezer": ALL_ON}) == [False]
    assert judge([_anomaly("dropout", duration_s=60.0)], {"freezer": ALL_ON}) == [True]


@settings(max_examples=200)
@given(
    breaches=st.lists(st.tuples(st.integers(0, 3), st.floats(0, 100, allow_nan=False)), max_size=30),
    windows=st.lists(
        st.tuples(st.integers(0, 3), st.floats(0, 100, allow_nan=False), st.floats(0, 30, allow_nan=False)),
        max_size=20,
    ),
)
def test_crossed_matches_a_scalar_reference(
    breaches: list[tuple[int, float]], windows: list[tuple[int, float, float]]
) -> None:
    found = crossed(
        devices=np.array([d for d, _, _ in windows], dtype=np.int64),
        start_at=np.array([s for _, s, _ in windows], dtype=np.float64),
        end_at=np.array([s + n for _, s, n in windows], dtype=np.float64),
        breach_devices=np.array([d for d, _ in breaches], dtype=np.int64),
        breach_ts=np.array([t for _, t in breaches], dtype=np.float64),
    )
    expected = [any(bd == d and s <= t < s + n for bd, t in breaches) for d, s, n in windows]
    assert found.tolist() == [int(x) for x in expected]


# -- from the engine's anomalies --------------------------------------------------------------------


def test_the_engines_anomalies_become_scored_anomalies_with_their_publish_times() -> None:
    fleet = Fleet.build(devices=5, seed=3)
    rules = load_rules(DEFAULT_RULES_FILE)
    thresholds = Thresholds.compile(rules, fleet.device_ids)
    explicit = [
        Anomaly(kind="flapping", device=0, start=10, end=40, magnitude=1.0),
        Anomaly(kind="dropout", device=1, start=20, end=60),
        Anomaly(kind="stuck", device=2, start=5, end=500),  # cut short by the run's end
        Anomaly(kind="malformed", device=3, start=7, end=8),
    ]
    schedule = Schedule(devices=5, rate=2.0, seed=3, explicit=explicit)
    truth = GroundTruth(thresholds, fleet.device_ids)
    engine = Engine(
        fleet=fleet,
        signal=SignalModel(fleet, rate=2.0, seed=3, start=0.0),
        injector=Injector(schedule, flap_level=thresholds.flap_levels(fleet.high + 2)),
        payload_format=PayloadFormat("json"),
        truth=truth,
        seed=3,
    )
    now = 5000.0
    for _ in range(200):  # 200 ticks of 5 devices: one tick (5 slots) per 0.5 s
        engine.take(5, now)
        now += 0.5
    # By start tick (stuck 5, malformed 7, flapping 10, dropout 20): the stamp each tick began at.
    assert engine.anomaly_started_at == [5002.5, 5003.5, 5005.0, 5010.0]
    breach_devices, _, breach_ts, *_ = truth.breach_arrays()
    scored = injected_anomalies(
        anomalies=engine.anomalies,
        started_at=engine.anomaly_started_at,
        device_ids=fleet.device_ids,
        rule_ids=[thresholds.rule_ids[i] for i in thresholds.rule_index.tolist()],
        noise_sigma=np.full(5, 0.5),
        rate=2.0,
        ticks=engine.tick + 1,
        breach_devices=breach_devices,
        breach_ts=breach_ts,
    )
    by_kind = {a.kind: a for a in scored}
    assert set(by_kind) == {"flapping", "dropout", "stuck"}  # malformed is not scored
    flapping, dropout, stuck = by_kind["flapping"], by_kind["dropout"], by_kind["stuck"]
    assert (flapping.device_id, flapping.rule_id, flapping.crossed) == (fleet.device_ids[0], "freezer", True)
    assert (flapping.start_at, flapping.duration_s, flapping.start_s) == (5005.0, 15.0, 5.0)
    assert not dropout.crossed and dropout.duration_s == 20.0
    assert stuck.duration_s == (200 - 5) / 2.0  # only the ticks the run published
    assert [a.kind for a in scored] == ["stuck", "flapping", "dropout"]
    assert judge(scored, {"coldroom": Detectors(offline_after=20.0)}) == [False, True, True]
    assert judge(scored, {"coldroom": Detectors(offline_after=21.0)}) == [False, True, False]


def test_a_drift_cut_short_by_the_runs_end_is_judged_by_the_offset_it_reached() -> None:
    drifts = [
        Anomaly(kind="drift", device=0, start=150, end=350, magnitude=-20.0),  # 50 of its 200 ticks
        Anomaly(kind="drift", device=0, start=10, end=110, magnitude=20.0),  # whole
    ]
    scored = injected_anomalies(
        anomalies=drifts, started_at=[150.0, 10.0], device_ids=("outdoor-0001",), rule_ids=["outdoor"],
        noise_sigma=np.full(1, 1.2), rate=1.0, ticks=200, breach_devices=np.empty(0, np.int64),
        breach_ts=np.empty(0),
    )  # fmt: skip
    assert [(a.duration_s, a.magnitude) for a in scored] == [(50.0, -5.0), (100.0, 20.0)]
    # 5 °C less twice the noise over the rate's 60 s window and a history step (300 / 32 s):
    # 60 x (5 - 2.4) / 69.375 = 2.25 > 1.5, not 20 °C/min.
    assert judge(scored, {"outdoor": ALL_ON}) == [True, True]
    strict = Detectors(rate=Rate(window=60.0, limits={"warning": 6.0}))
    assert judge(scored, {"outdoor": strict}) == [False, True]


# -- matching incidents -----------------------------------------------------------------------------


def _reference(
    anomalies: list[InjectedAnomaly], incidents: list[Incident], grace: float
) -> tuple[list[float | None], int]:
    """Obviously right: every anomaly against every incident. An incident of the anomaly's kind
    detects it when it opens in the anomaly's window, or, already open before, takes an alert in it."""
    first: list[float | None] = []
    for a in anomalies:
        times = [
            t
            for i in incidents
            if i.device_id == a.device_id and i.condition in ACCEPTS[a.kind]
            for t in (i.opened_at, *(i.later if i.opened_at < a.start_at else ()))
            if a.start_at <= t <= a.end_at + grace
        ]
        first.append(min(times) if times else None)
    false = sum(
        1
        for i in incidents
        if not any(
            i.device_id == a.device_id and a.start_at <= i.opened_at <= a.end_at + grace for a in anomalies
        )
    )
    return first, false


DEVICES = ("d-1", "d-2", "d-3")
anomalies_st = st.lists(
    st.builds(
        _anomaly,
        st.sampled_from(SCORED_KINDS),
        device_id=st.sampled_from(DEVICES),
        start_at=st.integers(0, 600).map(float),
        duration_s=st.integers(1, 120).map(float),
    ),
    max_size=12,
)
incidents_st = st.lists(
    st.builds(
        Incident,
        st.sampled_from(DEVICES),
        st.sampled_from(CONDITIONS),
        st.floats(-50, 800, allow_nan=False),
        st.lists(st.floats(-50, 800, allow_nan=False), max_size=4).map(sorted).map(tuple),
    ),
    max_size=25,
)


@settings(max_examples=300)
@given(
    anomalies=anomalies_st, incidents=incidents_st, judged=st.lists(st.booleans(), min_size=12, max_size=12)
)
def test_detection_and_false_incidents_match_a_scalar_reference(
    anomalies: list[InjectedAnomaly], incidents: list[Incident], judged: list[bool]
) -> None:
    flags = judged[: len(anomalies)]
    section = score_detection(
        anomalies=anomalies, detectable=flags, incidents=incidents, grace_s=GRACE, device_hours=2.0
    )
    first, false = _reference(anomalies, incidents, GRACE)
    total = section["total"]
    assert total["injected"] == len(anomalies)
    assert total["detectable"] == sum(flags)
    assert total["detected"] == sum(1 for t in first if t is not None)
    assert total["detected_detectable"] == sum(
        1 for t, ok in zip(first, flags, strict=True) if t is not None and ok
    )
    assert section["false_incidents"]["count"] == false
    assert section["false_incidents"]["per_1000_device_hours"] == round(false / 2.0 * 1000, 3)
    for kind in SCORED_KINDS:
        mine = [(t, ok) for a, t, ok in zip(anomalies, first, flags, strict=True) if a.kind == kind]
        row = section["by_kind"][kind]
        assert (row["injected"], row["detected"]) == (len(mine), sum(1 for t, _ in mine if t is not None))
        delays = sorted(
            t - a.start_at for a, t in zip(anomalies, first, strict=True) if a.kind == kind and t is not None
        )
        if delays:
            assert row["delay"]["samples"] == len(delays)
            assert row["delay"]["max_ms"] == round(delays[-1] * 1000, 3)
        else:
            assert row["delay"] is None
    # The counts nest, and a detectable anomaly missed is listed.
    assert total["detected_detectable"] <= total["detectable"] <= total["injected"]
    assert total["detected_detectable"] <= total["detected"] <= total["injected"]
    assert len(section["missed"]) == total["detectable"] - total["detected_detectable"]


@settings(max_examples=200)
@given(
    anomalies=anomalies_st, incidents=incidents_st, judged=st.lists(st.booleans(), min_size=12, max_size=12)
)
def test_recall_over_all_injected_cannot_hide_a_miss(
    anomalies: list[InjectedAnomaly], incidents: list[Incident], judged: list[bool]
) -> None:
    flags = judged[: len(anomalies)]
    section = score_detection(
        anomalies=anomalies, detectable=flags, incidents=incidents, grace_s=GRACE, device_hours=1.0
    )
    total = section["total"]
    if not total["injected"]:
        assert total["recall_all"] is None
        return
    # Every miss, detectable or not, lowers recall_all.
    assert total["recall_all"] == round(total["detected"] / total["injected"], 6)
    if total["detectable"] and total["detected"] == total["detected_detectable"]:
        # Nothing the predicate called undetectable was caught: then recall_all <= recall_detectable.
        assert total["recall_all"] <= total["recall_detectable"]
    if all(flags):
        assert total["recall_all"] == total["recall_detectable"]


@settings(max_examples=300)
@given(
    anomaly=st.builds(
        _anomaly,
        st.sampled_from(SCORED_KINDS),
        start_at=st.floats(0, 1000, allow_nan=False),
        duration_s=st.floats(0.5, 300, allow_nan=False),
    ),
    offset=st.floats(0, 1, allow_nan=False),
    outside=st.floats(0.001, 500, allow_nan=False),
    others=incidents_st,
)
def test_an_incident_of_the_right_kind_inside_the_window_always_counts_and_outside_never(
    anomaly: InjectedAnomaly, offset: float, outside: float, others: list[Incident]
) -> None:
    window = anomaly.end_at + GRACE - anomaly.start_at
    condition = sorted(ACCEPTS[anomaly.kind])[0]
    noise = [i for i in others if i.device_id != anomaly.device_id]  # other devices never count
    # min(): start + (end + grace - start) can round past end + grace in floating point.
    opened_at = min(anomaly.start_at + offset * window, anomaly.end_at + GRACE)
    inside = Incident(anomaly.device_id, condition, opened_at)
    found = score_detection(
        anomalies=[anomaly], detectable=[True], incidents=[*noise, inside], grace_s=GRACE, device_hours=1.0
    )
    assert found["total"]["detected"] == 1
    assert found["total"]["delay"]["max_ms"] == pytest.approx(offset * window * 1000, abs=1e-3)
    assert found["false_incidents"]["count"] == sum(1 for _ in noise)  # no anomaly on those devices
    wrong = [c for c in CONDITIONS if c not in ACCEPTS[anomaly.kind]]
    misses = [
        Incident(anomaly.device_id, condition, anomaly.start_at - outside),
        Incident(anomaly.device_id, condition, anomaly.end_at + GRACE + outside),
        Incident("elsewhere", condition, anomaly.start_at + offset * window),
        *(Incident(anomaly.device_id, c, anomaly.start_at + offset * window) for c in wrong),
    ]
    missed = score_detection(
        anomalies=[anomaly], detectable=[True], incidents=misses, grace_s=GRACE, device_hours=1.0
    )
    assert missed["total"]["detected"] == 0
    assert missed["missed"][0]["kind"] == anomaly.kind
    # The wrong-kind incidents inside the window are not false; the three outside it are.
    assert missed["false_incidents"]["count"] == 3


def test_pipeline_conditions_are_neither_detections_nor_false_device_incidents() -> None:
    drop = _anomaly("dropout", device_id="d-1", duration_s=60.0)
    found = score_detection(
        anomalies=[drop],
        detectable=[True],
        incidents=[Incident("d-1", "ingest_silent", 1010.0), Incident("pipeline", "consumer_lag", 50.0)],
        grace_s=GRACE,
        device_hours=1.0,
    )
    assert (found["total"]["detected"], found["incidents"], found["false_incidents"]["count"]) == (0, 0, 0)


def test_unmeasured_runs_report_what_was_injected_and_detectable_only() -> None:
    anomalies = [_anomaly("dropout", duration_s=60.0), _anomaly("stuck", duration_s=10.0)]
    section = anomaly_detection(
        anomalies=anomalies,
        detectable=judge(anomalies, {"freezer": ALL_ON}),
        detectors={"freezer": ALL_ON},
        incidents=None,
        grace_s=GRACE,
        incident_gap_s=30.0,
        device_hours=1.0,
        excluded={"malformed": 2},
    )
    assert section["measured"] is False
    assert section["by_kind"]["dropout"] == {
        "injected": 1,
        "detectable": 1,
        "detected": None,
        "detected_detectable": None,
        "recall_detectable": None,
        "recall_all": None,
        "delay": None,
    }
    assert section["by_kind"]["stuck"]["detectable"] == 0
    assert section["false_incidents"] is None and section["incidents"] is None
    assert set(section["predicates"]) == set(SCORED_KINDS) == set(section["accepts"])
    assert section["detectors"]["freezer"]["offline_after"] == 30.0
    assert section["excluded"] == {"malformed": 2}


# -- incidents from alerts --------------------------------------------------------------------------


def _alert(device: str, condition: Condition, ts: float, *, rule: str = "r", lag: float = 0.2) -> Any:
    return new_alert(
        device_id=device, metric="temperature", rule_id=rule, severity="critical", condition=condition,
        threshold=1.0, value=2.0, reading_ts=ts, detected_at=ts + lag,
    )  # fmt: skip


def test_alerts_become_incidents_like_the_store_opens_them() -> None:
    alerts = [
        _alert("d-1", "above", 100.0),
        _alert("d-1", "above", 100.0),  # redelivered
        _alert("d-1", "below", 110.0),  # the same threshold incident (kind threshold)
        _alert("d-1", "rate", 111.0),  # another kind: its own incident
        _alert("d-1", "above", 200.0),  # after a quiet gap: a new incident
        _alert("d-2", "offline", 150.0, lag=30.0),
        _alert("d-2", "offline", 160.0, lag=30.0),  # a second silence: a second incident
        _alert("d-1", "above", 205.0, rule="other"),  # another rule: its own incident
    ]
    incidents = incidents_from_alerts(alerts, gap=30.0)
    assert incidents == [
        Incident("d-1", "above", 100.2, later=(110.2,)),
        Incident("d-1", "rate", 111.2),
        Incident("d-2", "offline", 180.0),
        Incident("d-2", "offline", 190.0),
        Incident("d-1", "above", 200.2),
        Incident("d-1", "above", 205.2),
    ]


def test_an_anomaly_adding_to_an_incident_already_open_on_its_device_is_detected_by_that_alert() -> None:
    # Seen on 1,000 devices x 30 min: a spike while a drift's threshold incident was open on the
    # device. The store keeps one open incident per (device, rule, kind): the spike's alert joins it.
    spike = _anomaly("spike", start_at=1000.0, duration_s=1.0, crossed=True)
    alerts = [
        _alert("freezer-0001", "above", 980.0, rule="freezer"),  # the drift's breach opens the incident
        _alert("freezer-0001", "above", 1000.0, rule="freezer"),  # the spike's breach, 20 s later
    ]
    incidents = incidents_from_alerts(alerts, gap=30.0)
    assert len(incidents) == 1
    found = score_detection(
        anomalies=[spike], detectable=[True], incidents=incidents, grace_s=GRACE, device_hours=1.0
    )
    assert found["total"]["detected"] == 1
    assert found["total"]["delay"]["max_ms"] == pytest.approx(200.0)  # its own alert's detected_at
    # An open incident that took no alert in the anomaly's window detects nothing.
    before = incidents_from_alerts(alerts[:1], gap=30.0)
    missed = score_detection(
        anomalies=[spike], detectable=[True], incidents=before, grace_s=GRACE, device_hours=1.0
    )
    assert missed["total"]["detected"] == 0
    # Nor does one of a kind the anomaly's kind does not accept.
    stuck = _anomaly("stuck", start_at=1000.0, duration_s=90.0)
    other = score_detection(
        anomalies=[stuck], detectable=[True], incidents=incidents, grace_s=GRACE, device_hours=1.0
    )
    assert other["total"]["detected"] == 0


# -- the table --------------------------------------------------------------------------------------


def test_the_summary_table_shows_every_kind_the_total_and_the_false_incidents() -> None:
    anomalies = [_anomaly("dropout", device_id="d-1", duration_s=60.0), _anomaly("spike", magnitude=20.0)]
    section = anomaly_detection(
        anomalies=anomalies,
        detectable=judge(anomalies, {"freezer": ALL_ON}),
        detectors={"freezer": ALL_ON},
        incidents=[Incident("d-1", "offline", 1031.0), Incident("d-9", "stuck", 5.0)],
        grace_s=GRACE,
        incident_gap_s=30.0,
        device_hours=10.0,
        excluded={"malformed": 0},
    )
    out = io.StringIO()
    Console(file=out, width=140).print(detection_table(section))
    text = out.getvalue()
    for kind in (*SCORED_KINDS, "total"):
        assert kind in text
    assert "31.0 / 31.0 s" in text  # the dropout's delay
    assert "false incidents: 1 (100.0 per 1,000 device-hours)" in text


def test_the_demo_summary_rows_say_what_was_caught_per_kind_only_when_measured() -> None:
    anomalies = [_anomaly("dropout", device_id="d-1", duration_s=60.0), _anomaly("stuck", duration_s=100.0)]
    common: dict[str, Any] = {
        "anomalies": anomalies,
        "detectable": judge(anomalies, {"freezer": ALL_ON}),
        "detectors": {"freezer": ALL_ON},
        "grace_s": GRACE,
        "incident_gap_s": 30.0,
        "device_hours": 10.0,
        "excluded": {"malformed": 0},
    }
    assert detection_summary(anomaly_detection(**common, incidents=None)) == {}
    assert detection_summary(None) == {}
    rows = detection_summary(anomaly_detection(**common, incidents=[Incident("d-1", "offline", 1031.0)]))
    assert rows["anomalies caught: dropout"] == (
        "1/1, detectable 1: recall 1.00 detectable / 1.00 all, delay p50/p99 31.0/31.0 s"
    )
    assert (
        rows["anomalies caught: stuck"]
        == "0/1, detectable 1: recall 0.00 detectable / 0.00 all, delay p50/p99 -"
    )
    assert rows["anomalies caught: spike"].startswith("0/0, detectable 0: recall - detectable / - all")
    assert rows["false incidents per 1,000 device-hours"] == "0.0 (0)"


def test_what_a_dropout_of_the_same_device_silenced_is_not_held_against_the_detectors() -> None:
    # Seen in the demo fleet (seed 7): a stuck sensor went silent 50 s in, a drift ran inside a dropout.
    anomalies = [
        Anomaly(kind="stuck", device=0, start=45, end=250),  # stuck readings only at ticks 45..94
        Anomaly(kind="dropout", device=0, start=95, end=203),
        Anomaly(kind="drift", device=1, start=77, end=126, magnitude=24.0),  # all of it in the dropout
        Anomaly(kind="dropout", device=1, start=58, end=151),
        Anomaly(kind="dropout", device=1, start=100, end=110),  # inside the one before: no silence of its own
        Anomaly(kind="drift", device=1, start=140, end=170, magnitude=20.0),  # published from tick 151
        Anomaly(kind="stuck", device=2, start=10, end=100),  # no dropout: all of it published
    ]
    scored = injected_anomalies(
        anomalies=anomalies, started_at=[float(a.start) for a in anomalies],
        device_ids=("freezer-0001", "greenhouse-0001", "rack-0001"),
        rule_ids=["freezer", "greenhouse", "rack"],
        noise_sigma=np.full(3, 0.5), rate=1.0, ticks=200, breach_devices=np.empty(0, np.int64),
        breach_ts=np.empty(0),
    )  # fmt: skip
    stuck, _, hidden_drift, first_drop, inner_drop, late_drift, whole_stuck = scored
    assert (stuck.duration_s, stuck.published_s) == (155.0, 50.0)  # the window stays, the readings shrink
    assert hidden_drift.published_s == 0.0
    assert (late_drift.published_s, late_drift.magnitude) == (19.0, 20.0)  # ticks 151..169
    assert (first_drop.shadowed, inner_drop.shadowed) == (False, True)
    assert whole_stuck.published_s is None and whole_stuck.readings_s == 90.0
    assert judge(scored, {"freezer": ALL_ON, "greenhouse": ALL_ON, "rack": ALL_ON}) == [
        False,  # 50 s of stuck readings: under stuck_for 60
        True,
        False,  # a drift no reading of which was published
        True,
        False,
        True,
        True,
    ]
