"""processors.detectors against the scalar reference, and cut into batches every which way.

The reference folds one reading at a time, so it cannot depend on batch cuts. The
vectorized detectors are checked against it on random streams (late and duplicate readings,
long flat stretches, few timestamps) cut at random places: findings per reading, the worst
per (device, kind) per batch, and the stored state byte for byte. A separate test states
batch-split invariance on the vectorized code alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import astuple, replace
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thermoflow.processors import detectors_reference as reference
from thermoflow.processors.detectors import (
    KINDS,
    NO_DETECTORS,
    DetectorConfig,
    DeviceStates,
    OutlierConfig,
    RateConfig,
    Readings,
    StuckConfig,
    compile_detectors,
    offline,
    scan,
    worst,
)

DEVICES = 3
Stream = list[reference.ScalarReading]
Configs = dict[int, DetectorConfig | None]

limits = st.one_of(
    st.fixed_dictionaries({"warning": st.sampled_from([0.5, 2.0, 10.0])}),
    st.fixed_dictionaries({"critical": st.sampled_from([1.0, 3.0])}),
    st.just({"warning": 1.0, "critical": 4.0}),
)
stuck_configs = st.builds(
    StuckConfig,
    tolerance=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    stuck_for=st.sampled_from([0.5, 2.0, 6.0]),
    severity=st.sampled_from(["warning", "critical"]),
)
rate_configs = st.builds(RateConfig, window=st.sampled_from([1.0, 2.5, 8.0]), limits=limits)
outlier_configs = st.builds(
    OutlierConfig,
    window=st.sampled_from([2.0, 6.0, 16.0]),
    thresholds=limits,
    min_abs_deviation=st.sampled_from([0.01, 0.5]),
    min_samples=st.integers(1, 5),
)


def detector_configs(
    detector: Callable[[st.SearchStrategy[Any]], st.SearchStrategy[Any]],
) -> st.SearchStrategy[Any]:
    """Rules' detector settings, each of stuck, rate and outlier drawn through ``detector``."""
    return st.builds(
        DetectorConfig,
        offline_after=st.sampled_from([None, 2.0, 5.0]),
        offline_severity=st.sampled_from(["warning", "critical"]),
        stuck=detector(stuck_configs),
        rate=detector(rate_configs),
        outlier=detector(outlier_configs),
    )


configs = detector_configs(lambda detector: st.one_of(st.none(), detector))
device_configs = st.lists(st.one_of(st.none(), configs), min_size=DEVICES, max_size=DEVICES).map(
    lambda found: dict(enumerate(found))
)
values = st.one_of(
    st.sampled_from([0.0, 0.05, 0.1, 0.5, 1.0, -3.0, 5.0]),  # flat stretches and exact ties
    st.floats(-20, 20, allow_nan=False),
)


@st.composite
def streams(draw: Any, *, max_size: int = 60) -> Stream:
    """Readings in arrival order: ts mostly rising per device, some late, some duplicated."""
    steps = draw(
        st.lists(
            st.tuples(
                st.integers(0, DEVICES - 1),
                st.sampled_from([0.25, 0.5, 1.0, 1.0, 1.0, 2.0, 7.0, 0.0, -1.5]),  # 0: duplicate ts, <0: late
                values,
            ),
            max_size=max_size,
        )
    )
    clock = dict.fromkeys(range(DEVICES), 100.0)
    stream = []
    for arrival, (device, step, value) in enumerate(steps):
        clock[device] += step
        stream.append(reference.ScalarReading(device, clock[device], 100.0 + arrival * 0.5, value))
        if step < 0:
            clock[device] -= step  # a late reading does not move the device's clock back
    return stream


def cut(stream: Stream, data: st.DataObject) -> list[Stream]:
    points = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    edges = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


def readings(batch: Stream) -> Readings:
    return Readings(
        device=np.array([r.device for r in batch], dtype=np.int64),
        ts=np.array([r.ts for r in batch], dtype=np.float64),
        received_at=np.array([r.received_at for r in batch], dtype=np.float64),
        value=np.array([r.value for r in batch], dtype=np.float64),
    )


def rows_of(device_configs: Configs) -> np.ndarray[Any, np.dtype[np.int64]]:
    return np.array([d if device_configs[d] else NO_DETECTORS for d in range(DEVICES)], dtype=np.int64)


def comparable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """NaN equals NaN, for comparing rows."""
    return tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in row)


def vectorized_rows(found: Any, offset: int) -> list[tuple[Any, ...]]:
    columns = [
        found.reading + offset,
        found.device,
        found.ts,
        found.stuck_seconds,
        found.stuck,
        found.rate,
        found.rate_severity,
        found.score,
        found.outlier_severity,
    ]
    return [comparable(tuple(c[i].item() for c in columns)) for i in range(len(found))]


def detection_rows(detections: Any, offset: int) -> list[tuple[Any, ...]]:
    return [
        (
            int(detections.device[i]),
            detections.kind_name(i),
            detections.severity_name(i),
            float(detections.value[i]),
            float(detections.threshold[i]),
            float(detections.reading_ts[i]),
            int(detections.reading[i]) + offset if detections.reading[i] >= 0 else -1,
        )
        for i in range(len(detections))
    ]


def run(
    batches: list[Stream], device_configs: Configs, *, table: bool = True
) -> tuple[list[Any], list[Any], DeviceStates]:
    """The vectorized detectors over the batches: findings and detections of each batch, final state.

    With ``table`` (as the worker runs them, processors.detection), the devices' states are rows
    of a larger table in another order, each batch numbers its devices in first-seen order, takes
    their scalars and leaves the history in the table (``history_at``); without, every batch sees
    every device's state under its own number.
    """
    config = compile_detectors([device_configs[d] or DetectorConfig() for d in range(DEVICES)])
    rows = rows_of(device_configs)
    if not table:
        states = DeviceStates.empty(DEVICES)
        findings, detections, offset = [], [], 0
        for batch in batches:
            found, states = scan(readings(batch), states=states, config=config, rows=rows, reuse_history=True)
            findings.append(vectorized_rows(found, offset))
            detections.append(detection_rows(worst(found, config=config, rows=rows), offset))
            offset += len(batch)
        return findings, detections, states
    place = np.arange(DEVICES, dtype=np.int64)[::-1] + 2  # device d's row in a table with spare rows
    stored = DeviceStates.empty(DEVICES + 3)
    findings, detections, offset = [], [], 0
    for batch in batches:
        plain = readings(batch)
        firsts = np.sort(np.unique(plain.device, return_index=True)[1])
        seen = plain.device[firsts]  # the batch's devices in first-seen order
        local = np.argsort(seen)[np.searchsorted(np.sort(seen), plain.device)]
        at = place[seen]
        numbered = Readings(device=local, ts=plain.ts, received_at=plain.received_at, value=plain.value)
        states = stored.take(at, history=False)
        found, new = scan(numbered, states=states, config=config, rows=rows[seen], history_at=at)
        stored.put(at, new, history=False)
        detected = worst(found, config=config, rows=rows[seen])
        found = replace(found, device=seen[found.device])
        detected = replace(detected, device=seen[detected.device])
        findings.append(sorted(vectorized_rows(found, offset), key=lambda r: (r[1], r[2])))
        detections.append(sorted(detection_rows(detected, offset), key=lambda r: (r[0], KINDS.index(r[1]))))
        offset += len(batch)
    return findings, detections, stored.take(place)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), device_configs=device_configs, data=st.data())
def test_matches_the_scalar_reference(stream: Stream, device_configs: Configs, data: st.DataObject) -> None:
    assert_matches_the_reference(stream, device_configs, data)


#: Every device under every detector: the worker's usual batch, which skips the gathers of the
#: readings under a detector (processors.detectors.detect._every_or), rare in ``device_configs``.
every_detector = st.lists(
    detector_configs(lambda detector: detector),
    min_size=DEVICES,
    max_size=DEVICES,
).map(lambda found: dict(enumerate(found)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), device_configs=every_detector, data=st.data())
def test_every_device_under_every_detector_matches_the_scalar_reference(
    stream: Stream, device_configs: Configs, data: st.DataObject
) -> None:
    assert_matches_the_reference(stream, device_configs, data)


def assert_matches_the_reference(stream: Stream, device_configs: Configs, data: st.DataObject) -> None:
    """A cut stream's findings, detections, final state and offline timer are the scalar reference's."""
    batches = cut(stream, data)
    findings, detections, states = run(batches, device_configs)

    memories: dict[int, reference.Memory] = {}
    offset = 0
    for batch, got_findings, got_detections in zip(batches, findings, detections, strict=True):
        expected = reference.scan(batch, memories, device_configs)
        expected_rows = sorted((comparable(astuple(f)) for f in expected), key=lambda r: (r[1], r[2]))
        shifted = [(r[0] + offset, *r[1:]) for r in expected_rows]
        assert got_findings == shifted
        want = [(*astuple(d)[:6], d.reading + offset) for d in reference.worst(expected, device_configs)]
        assert got_detections == want
        offset += len(batch)

    stored = [memories.get(d, reference.Memory()).record() for d in range(DEVICES)]
    assert states.to_bytes() == DeviceStates.from_records(stored).to_bytes()

    # The offline timer over the final state, at a few event times.
    config = compile_detectors([device_configs[d] or DetectorConfig() for d in range(DEVICES)])
    reported = states.offline_reported
    for now in (110.0, 140.0, 140.5):
        got, reported = offline(
            now=now,
            last_seen=states.last_seen,
            reported=reported,
            config=config,
            rows=rows_of(device_configs),
        )
        assert detection_rows(got, 0) == [
            astuple(d) for d in reference.offline(now, memories, device_configs)
        ]


@settings(max_examples=300, deadline=None)
@given(stream=streams(), device_configs=device_configs, data=st.data())
def test_any_cut_gives_the_same_findings_state_and_alerts(
    stream: Stream, device_configs: Configs, data: st.DataObject
) -> None:
    """Batch-split invariance, stated on the vectorized code alone.

    Per reading the findings are the same; so is the final state (byte for byte); the same
    (device, kind) pairs fire; and the stream's worst finding per (device, kind) is among
    the alerts of any cut, every alert of which is one of the stream's findings.
    """
    # The whole stream as one batch the plain way, the cut one as the worker runs it: the two ways
    # of holding the state agree too.
    whole_findings, whole_detections, whole_state = run([stream], device_configs, table=False)
    split_findings, split_detections, split_state = run(cut(stream, data), device_configs)

    def key(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return (row[1], row[2])

    assert sorted(list(itertools.chain.from_iterable(split_findings)), key=key) == sorted(
        whole_findings[0], key=key
    )
    assert split_state.to_bytes() == whole_state.to_bytes()
    emitted = list(itertools.chain.from_iterable(split_detections))
    assert {(d[0], d[1]) for d in emitted} == {(d[0], d[1]) for d in whole_detections[0]}
    assert set(whole_detections[0]) <= set(emitted)
    evidence = {(r[1], r[2]) for r in whole_findings[0]}
    assert all((d[0], d[5]) in evidence for d in emitted)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 0.02, 0.04, 0.06, 0.3]), min_size=200, max_size=400),
    tolerance=st.sampled_from([0.0, 0.05, 0.1]),
    data=st.data(),
)
def test_long_calm_stretches_cut_into_the_same_runs(
    values: list[float], tolerance: float, data: st.DataObject
) -> None:
    """Long segments between hard breaks exercise the binary lifting and pointer doubling in full."""
    stream = [reference.ScalarReading(0, 100.0 + i, 100.0 + i, v) for i, v in enumerate(values)]
    device_configs: Configs = {
        0: DetectorConfig(stuck=StuckConfig(tolerance=tolerance, stuck_for=20.0)),
        1: None,
        2: None,
    }
    findings, _, states = run(cut(stream, data), device_configs)
    memories: dict[int, reference.Memory] = {}
    expected = [comparable(astuple(f)) for f in reference.scan(stream, memories, device_configs)]
    assert [r[1:] for r in itertools.chain.from_iterable(findings)] == [r[1:] for r in expected]
    assert states.to_bytes()[0] == DeviceStates.from_records([memories[0].record()]).to_bytes()[0]


def test_kinds_are_the_alert_conditions() -> None:
    assert KINDS == ("stuck", "rate", "outlier", "offline")


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.sampled_from([0.1, 0.2, 0.25]), min_size=100, max_size=300),  # every bucket filled
    values=st.lists(st.floats(-5, 5, allow_nan=False), min_size=300, max_size=300),
    data=st.data(),
)
def test_history_holds_every_window_across_cuts(
    steps: list[float], values: list[float], data: st.DataObject
) -> None:
    """A device with more history than the state keeps: rate anchors and baselines still agree across cuts."""
    times = np.cumsum(steps) + 100.0
    stream = [reference.ScalarReading(0, float(t), float(t), v) for t, v in zip(times, values, strict=False)]
    rate = RateConfig(window=data.draw(st.sampled_from([4.0, 7.9, 8.0])), limits={"warning": 1.0})
    outlier = OutlierConfig(window=8.0, thresholds={"warning": 1.0}, min_abs_deviation=0.01, min_samples=1)
    device_configs: Configs = {0: DetectorConfig(rate=rate, outlier=outlier), 1: None, 2: None}
    whole, _, whole_state = run([stream], device_configs)
    split, _, split_state = run(cut(stream, data), device_configs)
    assert [r[1:] for r in itertools.chain.from_iterable(split)] == [r[1:] for r in whole[0]]
    assert split_state.to_bytes() == whole_state.to_bytes()


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.tuples(st.integers(40, 160), st.integers(1, 30), st.integers(70, 90)),
    values=st.lists(st.floats(-5, 5, allow_nan=False), min_size=280, max_size=280),
    data=st.data(),
)
def test_devices_adding_many_history_entries_at_once_match_the_reference(
    lengths: tuple[int, int, int], values: list[float], data: st.DataObject
) -> None:
    """A backlog: devices adding more entries in one batch than the state keeps, and by different
    amounts, beside one adding a few (their histories are merged in matrices of their own)."""
    stream = []
    for device, length in enumerate(lengths):  # one reading per second: a new bucket each
        stream += [reference.ScalarReading(device, 100.0 + i, 100.0 + i, 0.0) for i in range(length)]
    stream.sort(key=lambda r: (r.ts, r.device))
    stream = [
        reference.ScalarReading(r.device, r.ts, r.received_at, v)
        for r, v in zip(stream, values, strict=False)
    ]
    rate = RateConfig(window=8.0, limits={"warning": 1.0})
    outlier = OutlierConfig(window=8.0, thresholds={"warning": 1.0}, min_abs_deviation=0.01, min_samples=1)
    device_configs: Configs = dict.fromkeys(range(DEVICES), DetectorConfig(rate=rate, outlier=outlier))
    batches = cut(stream, data)
    findings, _, states = run(batches, device_configs)
    memories: dict[int, reference.Memory] = {}
    for batch, got in zip(batches, findings, strict=True):
        expected = sorted(
            (comparable(astuple(f)) for f in reference.scan(batch, memories, device_configs)),
            key=lambda r: (r[1], r[2]),
        )
        assert [r[1:] for r in got] == [r[1:] for r in expected]
    stored = [memories.get(d, reference.Memory()).record() for d in range(DEVICES)]
    assert states.to_bytes() == DeviceStates.from_records(stored).to_bytes()


def test_a_stuck_run_of_signed_zeros_is_stored_as_the_scalar_fold_stores_it() -> None:
    """0.0 then -0.0 are equal: the run's min and max keep the first, as Python's min and max do
    (numpy's minimum keeps the second), so the stored state is the reference's byte for byte."""
    config = DetectorConfig(stuck=StuckConfig(tolerance=0.0, stuck_for=0.5))
    for values in ((0.0, -0.0), (-0.0, 0.0)):
        stream = [reference.ScalarReading(0, 100.0 + i, 100.0 + i, v) for i, v in enumerate(values)]
        device_configs: Configs = {0: config, 1: None, 2: None}
        _, _, states = run([stream], device_configs)
        memories: dict[int, reference.Memory] = {}
        reference.scan(stream, memories, device_configs)
        assert states.to_bytes()[0] == DeviceStates.from_records([memories[0].record()]).to_bytes()[0]
