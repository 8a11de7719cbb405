from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pytest

from thermoflow.rules import DEFAULT_RULES_FILE, load_rules
from thermoflow.simulator.anomalies import Injector, Schedule
from thermoflow.simulator.engine import Engine
from thermoflow.simulator.payloads import PayloadFormat, TopicTemplateError, check_template
from thermoflow.simulator.profiles import Fleet, SignalModel
from thermoflow.simulator.truth import GroundTruth, Thresholds


def _engine(fmt: str, *, devices: int = 30, per_hour: float = 3000.0, seed: int = 9) -> Engine:
    fleet = Fleet.build(devices=devices, seed=seed)
    rules = load_rules(DEFAULT_RULES_FILE)
    thresholds = Thresholds.compile(rules, fleet.device_ids)
    schedule = Schedule(devices=devices, rate=1.0, seed=seed, per_hour=per_hour)
    return Engine(
        fleet=fleet,
        signal=SignalModel(fleet, rate=1.0, seed=seed, start=1_764_218_400.0),
        injector=Injector(schedule, flap_level=thresholds.flap_levels(fleet.high + 2)),
        payload_format=PayloadFormat(fmt),  # type: ignore[arg-type]
        truth=GroundTruth(thresholds, fleet.device_ids),
        seed=seed,
        keep_keys=True,
    )


def _run(engine: Engine, slots: int) -> list[tuple[int, bytes]]:
    sent: list[tuple[int, bytes]] = []
    now = 1_764_218_400.0
    taken = 0
    while taken < slots:
        n = min(7, slots - taken)  # chunks that cut ticks anywhere
        batch = engine.take(n, now)
        taken += n
        now += 0.0004  # several ticks per millisecond: ts must still grow per device
        sent.extend(zip(batch.devices.tolist(), batch.payloads, strict=True))
    return sent


def test_json_readings_have_gapless_seqs_rising_ts_and_the_classified_values() -> None:
    engine = _engine("json")
    sent = _run(engine, 30 * 200)
    rules = load_rules(DEFAULT_RULES_FILE)
    seqs: dict[str, list[int]] = defaultdict(list)
    last_ts: dict[str, float] = {}
    breaching = set()
    garbage = 0
    for device, payload in sent:
        device_id = engine.fleet.device_ids[device]
        try:
            body = json.loads(payload)
            assert set(body) == {"value", "ts", "seq", "unit"}
            assert isinstance(body["value"], float)
        except (ValueError, AssertionError):
            garbage += 1
            continue
        seqs[device_id].append(body["seq"])
        assert body["ts"] > last_ts.get(device_id, 0.0)
        last_ts[device_id] = body["ts"]
        breach = rules.classify(device_id, "temperature", body["value"])
        if breach is not None:
            breaching.add(
                (device_id, body["seq"], body["ts"], body["value"], breach.rule_id, breach.severity)
            )
    for device_id, got in seqs.items():
        assert got == list(range(len(got))), device_id
        assert len(got) == engine.seq[engine.fleet.device_ids.index(device_id)]
    assert garbage == engine.truth.malformed_count > 0
    assert engine.skipped > 0  # dropouts happened
    assert len(sent) + engine.skipped == engine.slots == 30 * 200
    truth = {(b.device_id, b.seq, b.ts, b.value, b.rule_id, b.severity) for b in engine.truth.breaches()}
    assert truth == breaching and truth


@pytest.mark.parametrize("fmt", ["number", "senml"])
def test_other_formats_carry_the_same_values(fmt: str) -> None:
    reference = _run(_engine("json"), 600)
    sent = _run(_engine(fmt), 600)
    assert [d for d, _ in sent] == [d for d, _ in reference]
    for (_, ours), (_, theirs) in zip(sent, reference, strict=True):
        try:
            expected = json.loads(theirs)
            expected_value = expected["value"]
            assert isinstance(expected_value, float) and math.isfinite(expected_value)
        except (ValueError, KeyError, AssertionError):
            continue  # malformed in both
        if fmt == "number":
            assert float(ours) == expected_value
        else:
            (record,) = json.loads(ours)
            assert record == {"n": "temperature", "u": "Cel", "v": expected_value, "t": expected["ts"]}


def test_the_same_seed_publishes_the_same_values() -> None:
    def values(seed: int) -> list[float]:
        engine = _engine("number", seed=seed)
        out = []
        for _, payload in _run(engine, 900):
            try:
                out.append(float(payload))
            except ValueError:
                out.append(np.nan)
        return out

    assert np.array_equal(values(4), values(4), equal_nan=True)
    assert not np.array_equal(values(4), values(5), equal_nan=True)


def test_topic_templates_are_checked() -> None:
    assert check_template("plant/{profile}/{device_id}/{metric}")
    for bad, why in [
        ("sensors/{metric}", "must contain"),
        ("s/{device}", "unknown"),
        ("s/+/{device_id}", "+ or #"),
    ]:
        with pytest.raises(TopicTemplateError, match=why.replace("+", r"\+")):
            check_template(bad)
