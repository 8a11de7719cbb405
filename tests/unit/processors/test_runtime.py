"""The runtime's pure parts: registry, retries, batch decoding, the threshold function, rules reload."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from thermoflow.events import AlertEvent, Reading, alert_id, encode
from thermoflow.processors.columns import RawRecord, ReadingBatch, decode_batch
from thermoflow.processors.functions import ThresholdCheck, threshold_alerts
from thermoflow.processors.runtime import Emit, FunctionFailed, Registry, call_with_retries, setting
from thermoflow.processors.settings import ProcessorSettings
from thermoflow.processors.thresholds import compile_rules
from thermoflow.processors.watcher import RulesWatcher
from thermoflow.rules import parse_rules


def record(offset: int, value: bytes | None, *, key: bytes | None = b"k") -> RawRecord:
    return RawRecord(key=key, value=value, partition=3, offset=offset)


def good(offset: int, device_id: str, value: float, *, metric: str = "temperature") -> RawRecord:
    reading = Reading(device_id=device_id, metric=metric, value=value, ts=100.0 + offset, received_at=1.0)
    return record(offset, encode(reading), key=device_id.encode())


def test_decode_batch_fast_path_gives_columns() -> None:
    records = [good(0, "a", 1.0), good(1, "b", 2.0), good(2, "a", 3.0), good(3, "a", 4.0, metric="humidity")]
    batch, rejects = decode_batch("t", records)
    assert rejects == []
    assert len(batch) == 4
    assert [batch.device_id(i) for i in range(4)] == ["a", "b", "a", "a"]
    assert [batch.metric(i) for i in range(4)] == ["temperature", "temperature", "temperature", "humidity"]
    assert batch.columns.values.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert batch.columns.ts.tolist() == [100.0, 101.0, 102.0, 103.0]
    assert batch.offset.tolist() == [0, 1, 2, 3] and batch.partition.tolist() == [3, 3, 3, 3]
    assert list(batch.records) == records


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b"",
        None,
        b'{"device_id": "x", "value": 1.0, "ts": 1.0}',
        b'{"device_id": "x", "value": 1e999, "ts": 1.0, "received_at": 1.0}',
        b'{"device_id": "x", "value": 1.0, "ts": 1.0, "received_at": 1.0}\n'
        b'{"device_id": "y", "value": 1.0, "ts": 1.0, "received_at": 1.0}',
        b'{"device_id": "x", "value": 1.0, "ts": 1.0, "received_at": 1.0, "unit": "F"}',
    ],
)
def test_decode_batch_rejects_each_bad_record_and_keeps_the_rest(bad: bytes | None) -> None:
    records = [good(0, "a", 1.0), record(1, bad), good(2, "b", 2.0)]
    batch, rejects = decode_batch("t", records)
    assert [r.record.offset for r in rejects] == [1]
    assert rejects[0].error
    assert batch.offset.tolist() == [0, 2]
    assert [batch.device_id(i) for i in range(len(batch))] == ["a", "b"]


def test_decode_batch_joined_records_cannot_pass_as_readings() -> None:
    # Two halves of one reading: joined by the fast path's newline they still are not two readings.
    first, second = b'{"device_id": "x", "value": 1.0,', b'"ts": 1.0, "received_at": 1.0}'
    batch, rejects = decode_batch("t", [record(0, first), record(1, second)])
    assert len(batch) == 0 and len(rejects) == 2


RULES = parse_rules("rules: [{id: rack, devices: 'rack-*', above: {warning: 35, critical: 40}}]")


def test_threshold_alerts_carry_the_natural_key_and_a_stable_id() -> None:
    batch, _ = decode_batch("t", [good(0, "rack-1", 36.0), good(1, "rack-1", 41.0), good(2, "rack-2", 20.0)])
    (emit,) = threshold_alerts(batch, compile_rules(RULES), detected_at=5000.0)
    event = emit.event
    assert isinstance(event, AlertEvent)
    assert emit.key == "rack-1" and (emit.partition, emit.offset) == (3, 1)
    assert (event.device_id, event.metric, event.reading_ts) == ("rack-1", "temperature", 101.0)
    assert (event.rule_id, event.severity, event.condition) == ("rack", "critical", "above")
    assert (event.threshold, event.value, event.detected_at) == (40.0, 41.0, 5000.0)
    assert event.alert_id == alert_id(
        device_id="rack-1", rule_id="rack", severity="critical", reading_ts=101.0
    )


def _rule_id(emit: Emit) -> str:
    assert isinstance(emit.event, AlertEvent)
    return emit.event.rule_id


def test_threshold_check_uses_the_rules_in_force(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules: [{id: r1, devices: '*', above: {warning: 10}}]")
    now = [0.0]
    check = ThresholdCheck(RulesWatcher(path, interval=1.0, clock=lambda: now[0]), clock=lambda: 7.0)
    batch, _ = decode_batch("t", [good(0, "d", 12.0)])
    assert [_rule_id(e) for e in check(batch)] == ["r1"]
    path.write_text("rules: [{id: r2, devices: '*', above: {warning: 11}}]")
    now[0] = 2.0
    assert [_rule_id(e) for e in check(batch)] == ["r2"]


def test_watcher_reloads_on_change_and_keeps_old_rules_on_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules: [{id: r1, devices: '*', above: {warning: 10}}]")
    now = [0.0]
    watcher = RulesWatcher(path, interval=1.0, clock=lambda: now[0])
    assert watcher.current().rule_ids == ("r1",)
    path.write_text("rules: [{id: r2, devices: '*', above: {warning: 10}}]")
    now[0] = 0.5
    assert watcher.current().rule_ids == ("r1",)  # not looked at before the interval
    now[0] = 1.0
    assert watcher.current().rule_ids == ("r2",) and watcher.reloads == 1
    path.write_text("rules: [{id: r3, devices: '*', above: {warning: 10, critical: 1}}]")
    now[0] = 2.0
    assert watcher.current().rule_ids == ("r2",) and watcher.rejections == 1
    path.unlink()
    assert not watcher.poll() and watcher.current().rule_ids == ("r2",)
    path.write_text("rules: [{id: r4, devices: '*', above: {warning: 10}}]")
    assert watcher.poll() and watcher.current().rule_ids == ("r4",)


@pytest.mark.parametrize(("failures", "expected_sleeps"), [(2, [0.1, 0.2]), (0, [])])
async def test_call_with_retries_backs_off_then_succeeds(failures: int, expected_sleeps: list[float]) -> None:
    """Each failure waits the doubled backoff; a first call that succeeds is made once, no sleep."""
    sleeps: list[float] = []
    calls = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def body(batch: ReadingBatch) -> list[Emit]:
        calls.append(batch)
        if len(calls) <= failures:
            raise RuntimeError("transient")
        return []

    batch, _ = decode_batch("t", [])
    assert await call_with_retries(body, batch, attempts=4, backoff=0.1, sleep=sleep) == []
    assert len(calls) == failures + 1
    assert sleeps == expected_sleeps


async def test_call_with_retries_gives_up_after_the_last_attempt() -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def body(batch: ReadingBatch) -> list[Emit]:
        raise ValueError("always")

    batch, _ = decode_batch("t", [])
    with pytest.raises(FunctionFailed, match=r"3 time\(s\).*always") as caught:
        await call_with_retries(body, batch, attempts=3, backoff=0.5, sleep=sleep)
    assert isinstance(caught.value.__cause__, ValueError)
    assert sleeps == [0.5, 1.0]


def test_registry_binds_functions_to_topics() -> None:
    registry = Registry()

    @registry.function(source=setting("readings_topic"), sink="my.sink")
    def nothing(batch: ReadingBatch) -> list[Emit]:
        return []

    (spec,) = registry.specs()
    settings = ProcessorSettings(readings_topic="my.readings")
    assert (spec.name, spec.source_topic(settings), spec.sink_topic(settings)) == (
        "nothing",
        "my.readings",
        "my.sink",
    )
    assert spec.build(settings) is nothing
    with pytest.raises(ValueError, match="already registered"):
        registry.function(source="a", sink="b", name="nothing")(nothing)


def test_process_with_a_broken_rules_file_exits_2_naming_rule_and_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules: [{id: hot, devices: '*', above: {warning: 5, critical: 1}}]")
    result = subprocess.run(
        [sys.executable, "-m", "thermoflow", "process", "--rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "'hot'" in result.stderr and "above.critical" in result.stderr


def test_columns_are_numpy_arrays() -> None:
    batch, _ = decode_batch("t", [good(0, "a", 1.0)])
    assert batch.columns.values.dtype == np.float64 and batch.columns.pair.dtype == np.int64


@pytest.mark.parametrize(
    "payload",
    [
        b'{"device_id": "x", "value": 1.5, "ts": 2.0, "received_at": 3.0}',
        b'{"v": 1, "device_id": "x", "metric": "humidity", "value": -1, "unit": "C", "ts": 2, "seq": 7,'
        b' "received_at": 3.0, "extra": true}',
        b'{"v": 2, "device_id": "x", "value": 1.5, "ts": 2.0, "received_at": 3.0}',
        b'{"device_id": "", "value": 1.5, "ts": 2.0, "received_at": 3.0}',
        b'{"device_id": "x", "value": 1e999, "ts": 2.0, "received_at": 3.0}',
        b'{"device_id": "x", "value": 1.5, "ts": 2.0, "received_at": 3.0, "unit": "K"}',
        b'{"device_id": "x", "value": 1.5, "ts": 2.0, "received_at": 3.0, "seq": "one"}',
        b'{"device_id": "x", "value": NaN, "ts": 2.0, "received_at": 3.0}',
    ],
)
def test_the_batch_decoder_accepts_exactly_what_decode_reading_accepts(payload: bytes) -> None:
    from thermoflow.events import decode_reading

    try:
        expected: Reading | None = decode_reading(payload)
    except ValueError:
        expected = None
    batch, rejects = decode_batch("t", [record(0, payload)])
    assert (len(batch), len(rejects)) == ((1, 0) if expected else (0, 1))
    if expected:
        assert (batch.device_id(0), batch.metric(0)) == (expected.device_id, expected.metric)
        assert (batch.columns.values[0], batch.columns.ts[0]) == (expected.value, expected.ts)


def test_watcher_waits_for_a_file_being_written_instead_of_loading_it_empty(tmp_path: Path) -> None:
    """A reload that catches the file truncated but not yet rewritten must not drop every rule."""
    path = tmp_path / "rules.yaml"
    path.write_text("rules: [{id: r1, devices: '*', above: {warning: 10}}]")
    now = [0.0]
    watcher = RulesWatcher(path, interval=1.0, clock=lambda: now[0])
    path.write_text("")  # mid-write
    now[0] = 1.0
    assert watcher.current().rule_ids == ("r1",) and watcher.reloads == 0
    path.write_text("rules: [{id: r2, devices: '*', above: {warning: 10}}]")
    now[0] = 2.0
    assert watcher.current().rule_ids == ("r2",) and watcher.reloads == 1
