"""DeviceDetectors, the stateful function around the pure detectors: no Kafka (the state store's
in-memory side only), batches made with the real codec."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoflow.events import PIPELINE_DEVICE, AlertEvent, Clear, Reading, encode, is_clear
from thermoflow.processors.columns import RawRecord, ReadingBatch, decode_batch
from thermoflow.processors.detection import DeviceDetectors, receive_bounds, silent_rule
from thermoflow.processors.detectors import DeviceStates
from thermoflow.processors.runtime import Emit
from thermoflow.processors.state import StateStore, state_key
from thermoflow.processors.thresholds import CompiledRules, compile_rules
from thermoflow.rules import parse_rules
from thermoflow.settings import ThermoflowSettings

RULES = """
rules:
  - id: rack
    devices: "rack-*"
    offline_after: 30
    stuck: {tolerance: 0.1, for: 60}
default: {id: default, above: {critical: 1000}}
"""
TOPIC = "telemetry.readings"


def rules(text: str = RULES) -> CompiledRules:
    return compile_rules(parse_rules(text))


def detectors(*, silent_after: float = 60.0) -> DeviceDetectors:
    store = StateStore(ThermoflowSettings(), topic="state")
    store.mark_loaded(range(8))  # as after load(): the batches here use partitions 0..7
    return DeviceDetectors(store, source_topic=TOPIC, ingest_silent_after=silent_after, clock=lambda: 0.0)


def batch(readings: Sequence[tuple[str, float, float, int]], *, first_offset: int = 0) -> ReadingBatch:
    """(device, value, time, partition) -> a decoded batch; ts = received_at = time."""
    records = [
        RawRecord(
            device.encode(),
            encode(Reading(device_id=device, value=value, ts=at, received_at=at)),
            partition,
            first_offset + n,
        )
        for n, (device, value, at, partition) in enumerate(readings)
    ]
    decoded, rejects = decode_batch(TOPIC, records)
    assert not rejects
    return decoded


def alerts(emits: Sequence[Emit]) -> list[AlertEvent]:
    return [e.event for e in emits if isinstance(e.event, AlertEvent)]


def clears(emits: Sequence[Emit]) -> list[Clear]:
    return [e.event for e in emits if isinstance(e.event, Clear)]


def seconds(
    devices: Sequence[str], times: range, *, partition: int = 0, value: float = 5.0
) -> list[tuple[str, float, float, int]]:
    return [
        (d, value + (0 if d == "rack-stuck" else t % 3), float(t), partition) for t in times for d in devices
    ]


def test_changed_state_is_marked_for_the_state_topic_on_the_readings_partition() -> None:
    found = detectors()
    emits = found.check(batch([("rack-1", 5.0, 10.0, 4), ("rack-2", 6.0, 10.0, 1)]), rules())
    assert all(isinstance(e.event, AlertEvent | Clear) for e in emits), "state is not an event"
    table = found.store.table
    rows, records = table.changed()
    written = {
        str(table.keys[row]): (int(table.partition[row]), record)
        for row, record in zip(rows.tolist(), records, strict=True)
    }
    assert set(written) == {state_key("rack-1", "temperature"), state_key("rack-2", "temperature")}
    partition, record = written[state_key("rack-1", "temperature")]
    stored = DeviceStates.from_bytes([record]).record(0)
    assert partition == 4 and stored.last_seen == 10.0 and stored.run_start == 10.0
    assert table.changed()[1] == [], "written once"


def test_devices_without_detectors_keep_no_state() -> None:
    found = detectors()
    assert alerts(found.check(batch([("other-1", 5.0, 10.0, 0)]), rules())) == []
    assert len(found.store.table) == 0


def test_state_read_back_continues_a_stuck_run() -> None:
    """What one worker wrote, another reads (the records of a partition, as loaded from Kafka)."""
    first = detectors()
    first.check(batch(seconds(["rack-stuck"], range(0, 40))), rules())
    rows, records = first.store.table.changed()
    second = detectors()
    keys = [str(first.store.table.keys[row]) for row in rows.tolist()]
    second.store.table.load(0, dict(zip(keys, records, strict=True)))
    (alert,) = alerts(second.check(batch(seconds(["rack-stuck"], range(40, 70))), rules()))
    assert alert.condition == "stuck" and alert.value == 69.0, "the run began at 0, before the handover"


def test_stuck_across_batches_and_replay_gives_the_same_alert_ids() -> None:
    readings = seconds(["rack-stuck", "rack-ok"], range(0, 90))
    first = detectors()
    whole = alerts(first.check(batch(readings), rules()))
    split = detectors()
    cut = alerts(split.check(batch(readings[:70]), rules())) + alerts(
        split.check(batch(readings[70:]), rules())
    )
    assert {a.device_id for a in whole} == {"rack-stuck"} == {a.device_id for a in cut}
    assert whole[0].condition == "stuck" and whole[0].value == 89.0 and whole[0].threshold == 60.0
    assert whole[0].alert_id in {a.alert_id for a in cut}, "the stream's worst finding, whatever the cut"


def test_offline_by_the_partitions_event_time_then_cleared() -> None:
    found = detectors()
    found.check(batch(seconds(["rack-a", "rack-b"], range(0, 10))), rules())
    assert alerts(found.on_timer(rules(), now=10.0, caught_up=lambda p: True)) == []
    found.check(batch(seconds(["rack-a"], range(10, 40))), rules())  # rack-b silent since 9
    (offline,) = alerts(found.on_timer(rules(), now=40.0, caught_up=lambda p: True))
    assert (offline.device_id, offline.condition, offline.reading_ts) == ("rack-b", "offline", 9.0)
    assert offline.value == 30.0 and offline.threshold == 30.0
    assert alerts(found.on_timer(rules(), now=41.0, caught_up=lambda p: True)) == [], "reported once"

    emits = found.check(batch(seconds(["rack-a", "rack-b"], range(40, 42))), rules())
    (clear,) = clears(emits)
    assert (clear.device_id, clear.rule_id, clear.condition) == ("rack-b", "rack", "offline")
    assert (clear.since, clear.cleared_at) == (9.0, 40.0)
    assert any(is_clear(list(e.headers)) for e in emits)


def test_a_worker_that_is_behind_sees_no_offline_device() -> None:
    """The offline clock is the partition's event time, not the wall clock: a replayed minute-long
    backlog (or a worker restarted after a stop) has every device moving together."""
    found = detectors()
    found.check(batch(seconds(["rack-a", "rack-b"], range(0, 10))), rules())
    assert alerts(found.on_timer(rules(), now=1_000.0, caught_up=lambda p: False)) == []
    found.check(batch(seconds(["rack-a", "rack-b"], range(10, 70))), rules())
    assert alerts(found.on_timer(rules(), now=1_000.0, caught_up=lambda p: False)) == []


def test_a_silent_partition_is_one_ingest_silent_alert_and_clears_when_it_receives() -> None:
    found = detectors(silent_after=60.0)
    found.check(
        batch(seconds(["rack-a"], range(0, 5), partition=0) + seconds(["rack-b"], range(0, 5), partition=1)),
        rules(),
    )
    found.check(batch(seconds(["rack-b"], range(5, 100), partition=1)), rules())
    assert alerts(found.on_timer(rules(), now=100.0, caught_up=lambda p: p != 0)) == [], "lagging: not judged"
    emitted = alerts(found.on_timer(rules(), now=100.0, caught_up=lambda p: True))
    silent = [a for a in emitted if a.condition == "ingest_silent"]
    assert [(a.device_id, a.rule_id, a.reading_ts) for a in silent] == [
        (PIPELINE_DEVICE, silent_rule(TOPIC, 0), 4.0)
    ]
    assert silent[0].value == 96.0 and silent[0].threshold == 60.0
    assert [
        a
        for a in alerts(found.on_timer(rules(), now=101.0, caught_up=lambda p: True))
        if a.condition == "ingest_silent"
    ] == []

    (clear,) = clears(found.check(batch(seconds(["rack-a"], range(100, 101), partition=0)), rules()))
    assert (clear.device_id, clear.rule_id, clear.since, clear.cleared_at) == (
        PIPELINE_DEVICE,
        silent_rule(TOPIC, 0),
        4.0,
        100.0,
    )


def test_every_partition_silent_is_one_fleet_alert() -> None:
    found = detectors(silent_after=60.0)
    found.check(
        batch(seconds(["rack-a"], range(0, 5), partition=0) + seconds(["rack-b"], range(0, 8), partition=1)),
        rules(),
    )
    silent = [
        a
        for a in alerts(found.on_timer(rules(), now=100.0, caught_up=lambda p: True))
        if a.condition == "ingest_silent"
    ]
    assert [(a.rule_id, a.reading_ts) for a in silent] == [(silent_rule(TOPIC, None), 7.0)]


def test_revoked_partitions_forget_their_state() -> None:
    found = detectors()
    found.check(batch([("rack-1", 5.0, 10.0, 4), ("rack-2", 5.0, 10.0, 1)]), rules())
    found.revoked([4])
    assert found.store.table.get(state_key("rack-1", "temperature")) is None
    assert found.store.table.get(state_key("rack-2", "temperature")) is not None
    assert 4 not in found.store.loaded() and 1 in found.store.loaded()
    assert [str(found.store.table.keys[r]) for r in found.store.table.changed()[0]] == [
        state_key("rack-2", "temperature")
    ], "a revoked partition's state is not written by this worker any more"


def test_a_partition_whose_state_is_not_here_is_left_to_its_owner() -> None:
    """Revoked while its state was being read: no state of its own is made up and written."""
    found = detectors()
    found.revoked([3])
    readings = seconds(["rack-stuck"], range(0, 90), partition=3) + seconds(["rack-a"], range(0, 90))
    emitted = alerts(found.check(batch(readings), rules()))
    assert {a.device_id for a in emitted} == set(), "rack-a is not stuck; rack-stuck is not ours"
    assert found.store.table.get(state_key("rack-stuck", "temperature")) is None
    assert found.store.table.get(state_key("rack-a", "temperature")) is not None


def test_readings_new_to_this_process_clear_a_silence_another_process_reported() -> None:
    """After a restart or a rebalance the reported silences are not known here: a partition's
    first readings clear its silence, and the first of all the fleet's (a no-op if none is open)."""
    found = detectors()
    first = clears(found.check(batch(seconds(["rack-a"], range(0, 2), partition=0)), rules()))
    assert [(c.rule_id, c.since, c.cleared_at) for c in first] == [
        (silent_rule(TOPIC, 0), 0.0, 0.0),
        (silent_rule(TOPIC, None), 0.0, 0.0),
    ]
    second = clears(found.check(batch(seconds(["rack-b"], range(2, 4), partition=1)), rules()))
    assert [c.rule_id for c in second] == [silent_rule(TOPIC, 1)], "the fleet's once per process"
    assert clears(found.check(batch(seconds(["rack-a"], range(4, 6), partition=0)), rules())) == []


def test_a_reloaded_rules_file_takes_effect_for_the_next_batch() -> None:
    found = detectors()
    found.check(batch(seconds(["rack-stuck"], range(0, 40))), rules())
    assert alerts(found.check(batch(seconds(["rack-stuck"], range(40, 50))), rules())) == []
    shorter = rules(RULES.replace("for: 60", "for: 30"))  # what RulesWatcher hands over after a reload
    (alert,) = alerts(found.check(batch(seconds(["rack-stuck"], range(50, 52))), shorter))
    assert (alert.condition, alert.threshold, alert.value) == ("stuck", 30.0, 51.0)


def test_state_rows_by_pair_agree_with_rows_by_key_through_adds_and_drops() -> None:
    from thermoflow.processors.state import StateTable

    table = StateTable(capacity=2)  # grown on the way
    on = [0, 0, 1]
    first = table.pair_rows(["a", "b", "c"], ["t", "t", "t"], np.array(on))  # new pairs: the slow path
    assert first.tolist() == [table.get(state_key(d, "t")) for d in "abc"]
    again = table.pair_rows(["c", "a"], ["t", "t"], np.array([1, 0]))  # all known: the fast path
    assert again.tolist() == [first[2], first[0]]
    table.drop([0])  # a and b go
    assert table.get(state_key("a", "t")) is None and ("a", "t") not in table.pairs
    fresh = table.pair_rows(["a", "c"], ["t", "t"], np.array([0, 1]))
    assert fresh.tolist() == [table.get(state_key("a", "t")), first[2]]
    assert table.partition[fresh[0]] == 0 and len(table) == 2
    # a batch of two metrics looks pairs up by both: c's humidity is a pair of its own
    mixed = table.pair_rows(["c", "c", "a"], ["t", "h", "t"], np.array([1, 1, 0]))
    assert mixed.tolist() == [first[2], table.get(state_key("c", "h")), fresh[0]]
    assert table.pair_rows(["c"], ["h"], np.array([1])).tolist() == [mixed[1]]  # one metric, not t


def test_the_offline_timer_follows_a_reloaded_rules_file() -> None:
    """The timer's rule per pair is cached between ticks: a reload (here a rule put first) must not
    leave it pointing at the old rules' rows."""
    found = detectors()
    found.check(batch(seconds(["rack-a", "rack-b"], range(0, 10))), rules())
    assert alerts(found.on_timer(rules(), now=10.0, caught_up=lambda p: True)) == []
    first = '  - id: other\n    devices: "other-*"\n    above: {critical: 50}\n'
    reloaded = rules(
        RULES.replace("rules:\n", "rules:\n" + first)
        .replace("id: rack", "id: rack-fast")
        .replace("offline_after: 30", "offline_after: 10")
    )
    found.check(batch(seconds(["rack-a"], range(10, 25))), reloaded)  # rack-b silent since 9
    (offline,) = alerts(found.on_timer(reloaded, now=25.0, caught_up=lambda p: True))
    assert (offline.device_id, offline.rule_id, offline.threshold) == ("rack-b", "rack-fast", 10.0)


@settings(max_examples=200, deadline=None)
@given(
    readings=st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1e9, allow_nan=False)), max_size=300),
    runs=st.booleans(),
)
def test_receive_bounds_are_each_partitions_earliest_and_latest(
    readings: list[tuple[int, float]], runs: bool
) -> None:
    """In runs of one partition (a fetch) or interleaved (more runs than are reduced one by one)."""
    if runs:
        readings.sort(key=lambda r: r[0])
    want: dict[int, tuple[float, float]] = {}
    for partition, at in readings:
        low, high = want.get(partition, (at, at))
        want[partition] = (min(low, at), max(high, at))
    got = receive_bounds(
        np.array([p for p, _ in readings], dtype=np.int64),
        np.array([a for _, a in readings], dtype=np.float64),
    )
    assert got == want
