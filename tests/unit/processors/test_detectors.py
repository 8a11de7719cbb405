"""processors.detectors on the situations issue 13 names: a frozen sensor, a warming freezer, a spike,
a quiet sensor, late and replayed readings, a silent device, a silent partition, stored state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thermoflow.processors.detectors import (
    HISTORY,
    NO_DETECTORS,
    RECORD_SIZE,
    DetectorConfig,
    DetectorConfigError,
    DeviceState,
    DeviceStates,
    OutlierConfig,
    RateConfig,
    Readings,
    StuckConfig,
    compile_detectors,
    detect,
    ingest_silent,
    offline,
    scan,
)

ONE = np.zeros(1, dtype=np.int64)


def batch(ts: np.ndarray, values: np.ndarray) -> Readings:
    return Readings(device=np.zeros(ts.size, dtype=np.int64), ts=ts, received_at=ts + 0.01, value=values)


def noisy(seconds: int, *, level: float, sigma: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    ts = 1_764_000_000.0 + np.arange(seconds, dtype=np.float64)
    return ts, level + np.random.default_rng(seed).normal(0.0, sigma, seconds)


def test_a_frozen_freezer_is_stuck_stuck_for_seconds_after_it_froze() -> None:
    ts, values = noisy(200, level=-18.0, sigma=0.2)
    values[100:] = -18.0  # frozen from ts[100]
    config = compile_detectors([DetectorConfig(stuck=StuckConfig(tolerance=0.05, stuck_for=60.0))])
    found, _ = scan(batch(ts, values), states=DeviceStates.empty(1), config=config, rows=ONE)
    stuck = found.ts[found.stuck > 0]
    assert stuck.size > 0
    assert ts[100] <= stuck[0] - 60.0 <= ts[100] + 0.0  # a run starting at the freeze at the latest
    detections, state = detect(batch(ts, values), states=DeviceStates.empty(1), config=config, rows=ONE)
    assert [detections.kind_name(i) for i in range(len(detections))] == ["stuck"]
    assert detections.value[0] == ts[-1] - state.run_start[0] >= 99.0  # the worst: the longest-stuck reading


def test_a_noisy_sensor_is_never_stuck() -> None:
    ts, values = noisy(600, level=4.0, sigma=0.3)
    config = compile_detectors([DetectorConfig(stuck=StuckConfig(tolerance=0.05, stuck_for=60.0))])
    found, _ = scan(batch(ts, values), states=DeviceStates.empty(1), config=config, rows=ONE)
    assert not found.stuck.any()
    assert np.nanmax(found.stuck_seconds) < 60.0


def test_a_stuck_run_continues_across_batches() -> None:
    ts = 100.0 + np.arange(90, dtype=np.float64)
    config = compile_detectors([DetectorConfig(stuck=StuckConfig(tolerance=0.1, stuck_for=60.0))])
    states = DeviceStates.empty(1)
    fired = []
    for part in np.array_split(np.arange(90), 9):  # 10 s batches: none alone lasts 60 s
        found, states = detect(
            batch(ts[part], np.full(part.size, 5.0)), states=states, config=config, rows=ONE
        )
        fired += found.reading_ts.tolist()
    assert fired == [169.0, 179.0, 189.0]  # stuck from 160.0 on; per batch its worst (longest) reading
    assert states.run_start[0] == 100.0


def test_a_freezer_warming_at_3_c_per_minute_pages_on_rate() -> None:
    ts, values = noisy(300, level=-18.0, sigma=0.1)
    values[150:] += (ts[150:] - ts[150]) * (3.0 / 60.0)
    config = compile_detectors(
        [DetectorConfig(rate=RateConfig(window=60.0, limits={"warning": 1.0, "critical": 2.5}))]
    )
    detections, _ = detect(batch(ts, values), states=DeviceStates.empty(1), config=config, rows=ONE)
    assert detections.kind_name(0) == "rate"
    assert detections.severity_name(0) == "critical"
    assert 2.5 < detections.value[0] < 3.6
    assert detections.threshold[0] == 2.5
    found, _ = scan(batch(ts, values), states=DeviceStates.empty(1), config=config, rows=ONE)
    assert not found.rate_severity[found.ts < ts[150]].any()  # flat before: noise over a minute is small


def test_a_one_reading_spike_does_not_fire_rate_again_a_window_later() -> None:
    """The spike is a history entry (the first reading of its bucket), so it becomes the anchor of
    the readings a window later: the anchor's median with its neighbours keeps them quiet."""
    ts, values = noisy(300, level=-18.0, sigma=0.1)
    config = compile_detectors([DetectorConfig(rate=RateConfig(window=60.0, limits={"critical": 3.0}))])
    step = 60.0 / 32
    spike = next(i for i in range(100, 200) if np.floor(ts[i] / step) != np.floor(ts[i - 1] / step))
    values[spike] += 12.0
    found, _ = scan(batch(ts, values), states=DeviceStates.empty(1), config=config, rows=ONE)
    firing = found.ts[found.rate_severity > 0]
    assert firing.tolist() == [ts[spike]], "the spike itself only, not its echo a window later"


def test_a_tie_reports_the_earliest_reading() -> None:
    ts = np.arange(0.0, 40.0, 0.25)
    config = compile_detectors([DetectorConfig(rate=RateConfig(window=8.0, limits={"warning": 1.0}))])
    found, _ = detect(batch(ts, ts / 16.0), states=DeviceStates.empty(1), config=config, rows=ONE)
    assert found.value.tolist() == [3.75]  # exact: every rate ties
    assert found.reading_ts.tolist() == [8.0]


def test_a_spike_is_an_outlier_and_a_quiet_sensors_wobble_is_not() -> None:
    ts, values = noisy(120, level=20.0, sigma=0.1)
    values[100] += 3.0
    outlier = OutlierConfig(window=60.0, thresholds={"warning": 4.0, "critical": 8.0}, min_abs_deviation=0.5)
    config = compile_detectors([DetectorConfig(outlier=outlier)])
    detections, _ = detect(batch(ts, values), states=DeviceStates.empty(1), config=config, rows=ONE)
    assert (detections.kind_name(0), detections.severity_name(0)) == ("outlier", "critical")
    assert detections.reading.tolist() == [100]
    assert detections.threshold[0] == 8.0

    quiet = np.full(120, 20.0)
    quiet[100] += 0.3  # infinitely many MADs away, but under min_abs_deviation
    detections, _ = detect(batch(ts, quiet), states=DeviceStates.empty(1), config=config, rows=ONE)
    assert len(detections) == 0


def test_late_duplicate_and_replayed_readings_change_nothing() -> None:
    ts, values = noisy(120, level=5.0, sigma=0.3)
    config = compile_detectors(
        [
            DetectorConfig(
                stuck=StuckConfig(tolerance=0.5, stuck_for=5.0),
                rate=RateConfig(window=10.0, limits={"warning": 0.5}),
                outlier=OutlierConfig(window=20.0, thresholds={"warning": 2.0}, min_abs_deviation=0.1),
            )
        ]
    )
    _, states = scan(batch(ts, values), states=DeviceStates.empty(1), config=config, rows=ONE)
    again, replayed = scan(batch(ts, values), states=states, config=config, rows=ONE)
    assert len(again) == 0
    assert replayed.to_bytes() == states.to_bytes()

    shuffled = np.random.default_rng(3).permutation(120)
    found, _ = scan(
        batch(ts[shuffled], values[shuffled]), states=DeviceStates.empty(1), config=config, rows=ONE
    )
    # Only readings later than every earlier arrival count: the running maxima of the arrival order.
    records = np.flatnonzero(
        ts[shuffled] > np.maximum.accumulate(np.concatenate(([-np.inf], ts[shuffled][:-1])))
    )
    assert found.reading.tolist() == records.tolist()


def test_devices_without_a_rule_only_refresh_last_seen() -> None:
    config = compile_detectors([DetectorConfig(stuck=StuckConfig(tolerance=1.0, stuck_for=1.0))])
    ts = np.arange(10.0)
    found, states = scan(
        batch(ts, np.zeros(10)), states=DeviceStates.empty(1), config=config, rows=np.array([NO_DETECTORS])
    )
    assert not (found.stuck.any() or found.rate_severity.any() or found.outlier_severity.any())
    assert states.last_seen.tolist() == [9.01]
    expected = DeviceState(last_seen=9.01, last_ts=9.0)
    assert (
        DeviceStates.from_records([states.record(0)]).to_bytes()
        == DeviceStates.from_records([expected]).to_bytes()
    )


def test_offline_fires_once_per_silence_and_again_after_the_device_returns() -> None:
    config = compile_detectors([DetectorConfig(offline_after=30.0, offline_severity="warning")])
    rows = np.zeros(2, dtype=np.int64)
    last_seen, reported = np.array([100.0, 125.0]), np.full(2, np.nan)
    found, reported = offline(now=130.0, last_seen=last_seen, reported=reported, config=config, rows=rows)
    assert (found.device.tolist(), found.value.tolist(), found.threshold.tolist()) == ([0], [30.0], [30.0])
    assert found.severity_name(0) == "warning"
    found, reported = offline(now=160.0, last_seen=last_seen, reported=reported, config=config, rows=rows)
    assert found.device.tolist() == [1]  # device 0 was already reported for this silence
    last_seen[0] = 170.0  # back
    found, reported = offline(now=200.0, last_seen=last_seen, reported=reported, config=config, rows=rows)
    assert (found.device.tolist(), found.reading_ts.tolist()) == ([0], [170.0])


def test_ingest_silent_is_one_detection_for_the_fleet_and_none_while_lagging() -> None:
    partitions = np.arange(4)
    watermark = np.array([10.0, 12.0, 11.0, 13.0])
    fleet = ingest_silent(
        now=100.0, partitions=partitions, watermark=watermark, caught_up=np.ones(4, bool), silent_after=30.0
    )
    assert [(s.partition, s.since, s.silent_for) for s in fleet] == [(None, 13.0, 87.0)]
    lagging = np.array([True, False, True, True])
    found = ingest_silent(
        now=100.0, partitions=partitions, watermark=watermark, caught_up=lagging, silent_after=30.0
    )
    assert [s.partition for s in found] == [0, 2, 3]


def test_a_fleet_stopping_is_one_ingest_silent_detection_not_one_per_partition_first() -> None:
    """Partitions go quiet a moment apart; the first to cross ``silent_after`` is not singled out."""
    partitions, caught_up = np.arange(4), np.ones(4, bool)

    def silent(now: float, marks: list[float]) -> list[int | None]:
        found = ingest_silent(
            now=now, partitions=partitions, watermark=np.array(marks), caught_up=caught_up, silent_after=30.0
        )
        return [s.partition for s in found]

    fading = [10.0, 10.4, 10.7, 10.9]
    assert [silent(now, fading) for now in (40.2, 40.5, 40.8, 41.0)] == [[], [], [], [None]]
    assert silent(41.0, [10.0, 10.4, 10.7, 39.0]) == [0, 1, 2], "partition 3 heard from lately"


def test_state_round_trips_through_bytes_and_stays_small() -> None:
    ts, values = noisy(500, level=3.0, sigma=0.2)
    config = compile_detectors(
        [
            DetectorConfig(
                stuck=StuckConfig(tolerance=0.1, stuck_for=60.0),
                rate=RateConfig(window=60.0, limits={"critical": 3.0}),
                outlier=OutlierConfig(window=60.0, thresholds={"warning": 5.0}, min_abs_deviation=0.5),
            )
        ]
    )
    _, states = scan(batch(ts, values), states=DeviceStates.empty(1), config=config, rows=ONE)
    blobs = states.to_bytes()
    assert states.hist_len[0] == HISTORY
    assert DeviceStates.from_bytes(blobs).to_bytes() == blobs
    assert len(blobs[0]) == RECORD_SIZE < 64 + 16 * HISTORY
    assert DeviceStates.from_bytes(blobs).record(0).last_ts == ts[-1]
    assert DeviceStates.from_bytes([None]).to_bytes() == DeviceStates.empty(1).to_bytes()
    for unreadable in (blobs[0][:-1], b"\x02" + blobs[0][1:], b"", blobs[0] + b"x"):
        assert DeviceStates.from_bytes([unreadable]).to_bytes() == DeviceStates.empty(1).to_bytes()
    assert DeviceStates.from_records([states.record(0)]).to_bytes() == blobs


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: StuckConfig(tolerance=-1.0, stuck_for=60.0), "stuck.tolerance"),
        (lambda: RateConfig(window=60.0, limits={"warning": 3.0, "critical": 1.0}), "rate.limits.critical"),
        (lambda: RateConfig(window=0.0, limits={"warning": 3.0}), "rate.window"),
        (lambda: OutlierConfig(window=60.0, thresholds={}, min_abs_deviation=1.0), "outlier.thresholds"),
        (lambda: DetectorConfig(offline_after=float("nan")), "offline_after"),
    ],
)
def test_bad_settings_name_their_field(make: object, field: str) -> None:
    with pytest.raises(DetectorConfigError, match=f"`{field}"):
        make()  # type: ignore[operator]


@given(
    st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=60),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 40)), min_size=1, max_size=30),
)
def test_baseline_range_is_the_min_and_max_of_each_slice(
    values: list[float], rows: list[tuple[int, int]]
) -> None:
    from thermoflow.processors.detectors import history

    array = np.array(values)
    rows = [(min(low, len(values)), min(count, len(values) - min(low, len(values)))) for low, count in rows]
    low = np.array([r[0] for r in rows], dtype=np.int64)
    counts = np.array([r[1] for r in rows], dtype=np.int64)
    lowest, highest = history._range(array, low, counts)
    for at, (start, count) in enumerate(rows):
        part = values[start : start + count]
        if part:
            assert (float(lowest[at]), float(highest[at])) == (min(part), max(part))
        else:
            assert np.isnan(lowest[at]) and np.isnan(highest[at]), "an empty baseline has no range"
