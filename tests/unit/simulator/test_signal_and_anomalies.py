from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from thermoflow.rules import DEFAULT_RULES_FILE, load_rules
from thermoflow.simulator.anomalies import (
    KINDS,
    Anomaly,
    AnomalyError,
    Injector,
    Schedule,
    load_schedule,
    parse_kinds,
)
from thermoflow.simulator.profiles import PROFILES, Fleet, FleetError, SignalModel, parse_mix


def test_fleet_ids_follow_the_profiles_and_the_mix() -> None:
    fleet = Fleet.build(devices=40, seed=3, mix=parse_mix("freezer=3,rack=1"))
    assert fleet.device_ids[:5] == (
        "freezer-0001",
        "freezer-0002",
        "rack-0001",
        "freezer-0003",
        "freezer-0004",
    )
    names = [d.rsplit("-", 1)[0] for d in fleet.device_ids]
    assert names.count("freezer") == 30 and names.count("rack") == 10
    assert len(set(fleet.device_ids)) == 40
    with pytest.raises(FleetError, match="unknown profile 'fridge'"):
        parse_mix("fridge")


def test_a_healthy_fleet_stays_in_its_normal_ranges_and_breaches_no_shipped_rule() -> None:
    fleet = Fleet.build(devices=500, seed=11)
    signal = SignalModel(fleet, rate=1.0, seed=11, start=1_764_218_400.0, time_scale=60.0)  # a day in 24 min
    rules = load_rules(DEFAULT_RULES_FILE)
    for tick in range(1440):
        values = signal.tick(tick)
        assert ((values >= fleet.low) & (values <= fleet.high)).all()
        if tick % 120 == 0:
            assert all(
                rules.classify(d, "temperature", v) is None
                for d, v in zip(fleet.device_ids, values.tolist(), strict=True)
            )


def test_a_healthy_sensor_near_its_range_bound_is_folded_back_not_held_flat() -> None:
    """A clipped signal sat on the bound, constant, for as long as the noise stayed beyond it:
    a healthy device that a stuck detector (tolerance 0.05 °C, 60 s) rightly flagged."""
    built = Fleet.build(devices=20, seed=3)
    # A range 0.5 °C either side of each baseline and no daily cycle: the noise crosses the bounds often.
    fleet = replace(built, low=built.baseline - 0.5, high=built.baseline + 0.5, amplitude=np.zeros(20))
    signal = SignalModel(fleet, rate=1.0, seed=3, start=0.0)
    raw = np.array([signal.tick(t) for t in range(1200)])
    assert ((raw >= fleet.low - 1e-9) & (raw <= fleet.high + 1e-9)).all()
    assert (raw > fleet.high - 0.05).any() and (raw < fleet.low + 0.05).any()  # it does reach the bounds
    values = np.round(raw, 2)  # as published
    spread = np.lib.stride_tricks.sliding_window_view(values, 60, axis=0)
    assert (spread.max(axis=-1) - spread.min(axis=-1)).min() > 0.05


def test_the_signal_is_reproducible_and_correlated_in_time_and_across_devices() -> None:
    fleet = Fleet.build(devices=50, seed=5, mix={"outdoor": 1.0})
    a = SignalModel(fleet, rate=1.0, seed=5, start=0.0)
    b = SignalModel(fleet, rate=1.0, seed=5, start=0.0)
    first = np.array([a.tick(k) for k in range(600)])
    assert np.array_equal(first, np.array([b.tick(k) for k in range(600)]))
    other = SignalModel(fleet, rate=1.0, seed=6, start=0.0)
    assert not np.array_equal(first, np.array([other.tick(k) for k in range(600)]))
    noise = first - first.mean(axis=0)
    lag1 = np.mean([np.corrcoef(noise[:-1, i], noise[1:, i])[0, 1] for i in range(50)])
    assert lag1 > 0.9  # outdoor noise: correlation time 600 s at 1 Hz
    across = np.corrcoef(noise[:, 0], noise[:, 1])[0, 1]
    assert across > 0.3  # the profile's shared component
    with pytest.raises(ValueError, match="in order"):
        a.tick(700)


def test_the_anomaly_schedule_is_reproducible_by_seed() -> None:
    def schedule(seed: int) -> list[Anomaly]:
        return Schedule(devices=1000, rate=2.0, seed=seed, per_hour=20.0).between(0, 2400)

    first = schedule(42)
    assert first == schedule(42)
    assert first != schedule(43)
    assert {a.kind for a in first} == set(KINDS)
    assert len(first) == pytest.approx(20.0 * 1000 * 1200 / 3600, rel=0.1)
    assert all(0 <= a.start < 2400 and a.end > a.start and 0 <= a.device < 1000 for a in first)
    # The same events whatever window they are asked for in.
    assert schedule(42)[:10] == Schedule(devices=1000, rate=2.0, seed=42, per_hour=20.0).between(0, 1200)[:10]


def test_anomaly_kinds_share_the_rate_by_weight() -> None:
    kinds = parse_kinds("spike=3,malformed=1")
    events = Schedule(devices=2000, rate=1.0, seed=3, per_hour=60.0, kinds=kinds).between(0, 600)
    counts = {kind: sum(1 for a in events if a.kind == kind) for kind in ("spike", "malformed")}
    assert set(a.kind for a in events) == {"spike", "malformed"}
    assert counts["spike"] / counts["malformed"] == pytest.approx(3.0, rel=0.15)
    assert (
        Schedule(devices=2000, rate=1.0, seed=3, per_hour=60.0, kinds=parse_kinds("none")).between(0, 600)
        == []
    )


def test_the_injector_applies_each_kind() -> None:
    explicit = [
        Anomaly(kind="spike", device=0, start=2, end=3, magnitude=20.0),
        Anomaly(kind="drift", device=1, start=0, end=4, magnitude=8.0),
        Anomaly(kind="stuck", device=2, start=1, end=4),
        Anomaly(kind="dropout", device=3, start=1, end=3),
        Anomaly(kind="flapping", device=4, start=0, end=4, magnitude=0.5),
        Anomaly(kind="malformed", device=5, start=3, end=4),
    ]
    schedule = Schedule(devices=6, rate=1.0, seed=1, explicit=explicit)
    injector = Injector(schedule, flap_level=np.full(6, 10.0))
    rows, publish, malformed = [], [], []
    for tick in range(5):
        values = np.full(6, float(tick))
        effects = injector.apply(tick, values)
        rows.append(values.tolist())
        publish.append(effects.publish.tolist())
        malformed.append(effects.malformed.tolist())
    column = list(zip(*rows, strict=True))
    assert column[0] == (0.0, 1.0, 22.0, 3.0, 4.0)  # spike at tick 2 only
    assert column[1] == (2.0, 5.0, 8.0, 11.0, 4.0)  # drift: 8 * (k+1)/4 on top of k, gone at 4
    assert column[2] == (0.0, 1.0, 1.0, 1.0, 4.0)  # stuck at its tick-1 value
    assert column[4] == (10.5, 9.5, 10.5, 9.5, 4.0)  # flapping around 10
    assert [p[3] for p in publish] == [True, False, False, True, True]
    assert [m[5] for m in malformed] == [False, False, False, True, False]
    assert injector.counts == dict.fromkeys(KINDS, 1)


def test_an_explicit_schedule_file_is_validated(tmp_path: Path) -> None:
    fleet = Fleet.build(devices=5, seed=1)
    path = tmp_path / "anomalies.yaml"
    path.write_text(
        "- {kind: spike, device: rack-0001, at: 2.5, magnitude: 30}\n"
        "- {kind: dropout, device: freezer-0001, at: 1, duration: 3}\n"
    )
    events = load_schedule(path, fleet=fleet, rate=2.0)
    assert events == [
        Anomaly(kind="spike", device=2, start=5, end=6, magnitude=30.0),
        Anomaly(kind="dropout", device=0, start=2, end=8, magnitude=0.0),
    ]
    path.write_text("- {kind: spike, device: rack-9999, at: 1}\n")
    with pytest.raises(AnomalyError, match=r"anomaly #0: device 'rack-9999' is not in the fleet"):
        load_schedule(path, fleet=fleet, rate=1.0)
    path.write_text("- {kind: meltdown, device: rack-0001, at: 1}\n")
    with pytest.raises(AnomalyError, match="anomaly #0"):
        load_schedule(path, fleet=fleet, rate=1.0)
    with pytest.raises(AnomalyError, match="unknown anomaly kind"):
        parse_kinds("spike,meltdown")


def test_profiles_normal_ranges_are_the_documented_ones() -> None:
    assert {name: (p.low, p.high) for name, p in PROFILES.items()} == {
        "freezer": (-22.0, -16.0),
        "coldroom": (2.0, 6.0),
        "rack": (20.0, 30.0),
        "greenhouse": (15.0, 32.0),
        "outdoor": (-10.0, 35.0),
    }
