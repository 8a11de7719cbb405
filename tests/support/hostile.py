"""Hostile MQTT input for the bridge: a catalogue of nasty payloads and topics, and a fast fuzzer.

Shared by the codec's unit tests, the integration test through the real bridge
(``tests/integration/ingest/test_hostile_payloads.py``) and ``bench/fuzz_bridge.py``.

Each catalogue case says how many readings it must yield (0: one dead letter) and, for a dead
letter, words its reason must contain. Timestamps are relative to ``now`` and stay far from the
edges of the accepted window, so that the seconds between generating a case and the bridge
receiving it cannot change its outcome.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from hypothesis import strategies as st

from thermoflow.ingest.codecs import PayloadLimits
from thermoflow.ingest.mapping import TopicTemplate
from thermoflow.ingest.records import Translator

LIMITS = PayloadLimits()  # the bridge's defaults
DAY = 86_400.0


@dataclass(frozen=True)
class Case:
    """One message: its device level in the topic, its payload, and the outcome it must have."""

    name: str
    payload: bytes
    readings: int  # 0: the message must become one dead letter
    words: str = ""  # in the dead letter's reason
    device: str | None = None  # the topic's device level (None: one of the test's own)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _j(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _sized(size: int) -> bytes:
    """A valid reading object padded to exactly ``size`` bytes."""
    head = b'{"value":1.5,"pad":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def _nested(depth: int) -> bytes:
    """A reading object whose extra field nests to a total depth of ``depth``."""
    return b'{"value":1.5,"x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def catalogue(now: float, *, big: bool = True) -> list[Case]:
    """The nasty cases; ``big`` adds the multi-megabyte ones (10 MB, a SenML pack of 100,000)."""
    old, ahead = now - 8 * DAY, now + 3600.0
    cases = [
        # -- numbers
        Case("int of 401 digits (defect 1)", b"1" + b"0" * 400, 0, "too large for a number"),
        Case("int of 401 digits as value", b'{"value":1' + b"0" * 400 + b"}", 0, "`value`"),
        Case("int of 401 digits as ts", b'{"value":1,"ts":1' + b"0" * 400 + b"}", 0, "`ts`"),
        Case("int of 5000 digits", b"9" * 5000, 0, "not a finite number"),
        Case("minus zero", b"-0", 1),
        Case("minus zero float", b'{"value":-0.0}', 1),
        Case("1e309", b"1e309", 0, "not a finite number"),
        Case("-1e309 in an object", b'{"value":-1e309}', 0, "Number out of range"),
        Case("largest double", b'{"value":1.7976931348623157e308}', 1),
        Case("1e308 °F overflows in °C", b'{"value":1e308,"unit":"F"}', 0, "`value` is not a finite number"),
        Case("subnormal", b'{"value":5e-324}', 1),
        Case("NaN", b"NaN", 0, "not a finite number"),
        Case("nan", b"nan", 0, "not a finite number"),
        Case("-nan", b"-nan", 0, "not a finite number"),
        Case("Infinity", b"Infinity", 0, "not a finite number"),
        Case("+inf", b"+inf", 0, "not a finite number"),
        Case("NaN in JSON", b'{"value":NaN}', 0, "not valid JSON"),
        Case("hex", b"0x1A", 0, "neither JSON nor a number"),
        Case("underscores", b"1_000", 0, "neither JSON nor a number"),
        Case("arabic-indic digits", "١٢".encode(), 0, "neither JSON nor a number"),
        Case("padded number", b" \t21.5\r\n", 1),
        Case("number and NUL", b"21.5\x00", 0, "neither JSON nor a number"),
        Case("seq 2**63 (defect 3)", b'{"value":1,"seq":9223372036854775808}', 0, "`seq`"),
        Case("seq -2**63-1", b'{"value":1,"seq":-9223372036854775809}', 0, "`seq`"),
        Case("seq int64 max", b'{"value":1,"seq":9223372036854775807}', 1),
        Case("seq int64 min", b'{"value":1,"seq":-9223372036854775808}', 1),
        Case("seq float", b'{"value":1,"seq":1.5}', 0, "`seq` must be an integer"),
        Case("value bool", b'{"value":true}', 0, "`value` must be a number"),
        # -- timestamps
        Case("ts 1e19 (defect 3)", b'{"value":1.5,"ts":1e19}', 0, "`ts`"),
        Case("ts epoch s", _j({"value": 1, "ts": now - 60}), 1),
        Case("ts epoch ms", _j({"value": 1, "ts": int((now - 60) * 1e3)}), 1),
        Case("ts epoch us", _j({"value": 1, "ts": int((now - 60) * 1e6)}), 1),
        Case("ts RFC 3339", _j({"value": 1, "timestamp": _iso(now - 60)}), 1),
        Case("ts RFC 3339 without zone", _j({"value": 1, "ts": _iso(now)[:-1]}), 0, "no time zone"),
        Case("ts year 9999", b'{"value":1,"ts":"9999-12-31T23:59:59-23:59"}', 0, "`ts`"),
        Case("ts year 1", b'{"value":1,"ts":"0001-01-01T00:00:00+23:59"}', 0, "`ts`"),
        Case("ts negative", b'{"value":1,"ts":-1}', 0, "non-negative"),
        Case("ts zero", b'{"value":1,"ts":0}', 0, "before the receive time"),
        Case("ts 8 days old", _j({"value": 1, "ts": old}), 0, "before the receive time"),
        Case("ts an hour ahead", _j({"value": 1, "ts": ahead}), 0, "ahead of the receive time"),
        Case("ts far future", _j({"value": 1, "time": 4e9}), 0, "`time`"),
        Case("ts a bool", b'{"value":1,"ts":true}', 0, "`ts` must be a number"),
        Case("ts an object", b'{"value":1,"ts":{}}', 0, "`ts` must be a number"),
        Case("ts a long string", _j({"value": 1, "ts": "9" * 60_000}), 0, "`ts`"),
        # -- text and encodings
        Case("empty payload", b"", 0, "neither JSON nor a number"),
        Case("whitespace", b" \n", 0, "neither JSON nor a number"),
        Case("null", b"null", 0, "not an object, number or SenML array"),
        Case("a string", b'"21.5"', 0, "JSON str"),
        Case("not UTF-8", b"\xff\xfe\x00\x01", 0, "not valid UTF-8"),
        Case("not UTF-8 inside JSON", b'{"value":1,"unit":"\xff"}', 0, "not valid UTF-8"),
        Case("lone surrogate escape", b'{"value":1,"unit":"\\ud800"}', 0, "not valid JSON"),
        Case("UTF-8 encoded surrogate", b'{"value":1,"unit":"\xed\xa0\x80"}', 0, "not valid UTF-8"),
        Case("overlong UTF-8", b'{"value":1,"unit":"\xc0\xaf"}', 0, "not valid UTF-8"),
        Case("UTF-16", '{"value":1}'.encode("utf-16"), 0, "not valid UTF-8"),
        Case("BOM then JSON", b'\xef\xbb\xbf{"value":1}', 1),
        Case("BOM then number", b"\xef\xbb\xbf21.5", 1),
        Case("two BOMs", b'\xef\xbb\xbf\xef\xbb\xbf{"value":1}', 0, "neither JSON nor a number"),
        Case("unit with NUL", b'{"value":1,"unit":"C\\u0000"}', 0, "unknown unit"),
        Case("unit °F", _j({"value": 32, "unit": "°F"}), 1),
        Case("unit a huge int", b'{"value":1,"unit":1' + b"0" * 400 + b"}", 0, "unknown unit (an integer"),
        Case("unit an array", b'{"value":1,"unit":[1]}', 0, "unknown unit (a JSON array)"),
        Case("unicode keys and junk", _j({"välue": 1, "value": 2, "😀": "\u2028"}), 1),
        Case("duplicate keys", b'{"value":1,"value":"x"}', 0, "`value` must be a number"),
        # -- nesting
        Case("deep nesting (defect 1)", b"[" * 30_000 + b"]" * 30_000, 0, "nesting is deeper than 32"),
        Case("deep unclosed", b"[" * 60_000, 0, "nesting is deeper than 32"),
        Case("deep objects", b'{"a":' * 5000 + b"1" + b"}" * 5000, 0, "nesting is deeper than 32"),
        Case("depth 32", _nested(32), 1),
        Case("depth 33", _nested(33), 0, "nesting is deeper than 32"),
        Case("brackets in strings", _j({"value": 1, "s": "[" * 1000}), 1),
        # -- sizes
        Case("size at the limit", _sized(LIMITS.max_bytes), 1),
        Case("size past the limit", _sized(LIMITS.max_bytes + 1), 0, "exceeds the limit of 65536"),
        # -- SenML
        Case("SenML empty", b"[]", 0, "SenML pack is empty"),
        Case(
            "SenML base fields only", _j([{"bn": "x/", "bt": now, "bu": "Cel"}]), 0, "no record with a value"
        ),
        Case(
            "SenML base then records",
            _j([{"bn": "d/", "bt": now, "bu": "Cel", "v": 1}, {"t": -1, "v": 2}]),
            2,
        ),
        Case("SenML relative times", _j([{"v": 1, "t": -5}, {"v": 2, "t": 0}, {"v": 3}]), 3),
        Case("SenML relative just below 2**28", _j([{"v": 1, "t": 2**28 - 1}]), 0, "`t`"),
        Case("SenML absolute at 2**28", _j([{"v": 1, "t": 2**28}]), 0, "before the receive time"),
        Case("SenML bn without n", _j([{"bn": "dev/temperature", "v": 1}]), 1),
        Case("SenML bt+t overflow", _j([{"bt": 1.7e308, "t": 1.7e308, "v": 1}]), 0, "`t`"),
        Case("SenML bv+v overflow", _j([{"bv": 1.7e308, "v": 1.7e308}]), 0, "`v`"),
        Case("SenML a string value", _j([{"n": "t", "vs": "on"}]), 0, "no numeric value"),
        Case("SenML a number record", b"[1]", 0, "SenML record 0 is a int"),
        Case("SenML at the record limit", _j([{"v": i % 7, "t": -i / 1000} for i in range(1000)]), 1000),
        Case("SenML past the record limit", _j([{"v": 1}] * 1001), 0, "more than the limit of 1000"),
        Case("SenML ts strings", _j([{"v": 1, "t": _iso(now)}]), 0, "`t` must be a number"),
        # -- topics (Mosquitto refuses control characters and non-characters before the bridge)
        Case("device with a space", b"1.5", 1, device="freezer 1"),
        Case("device an emoji", b"1.5", 1, device="frost-😀"),
        Case("device with ZWSP", b"1.5", 0, "U+200B", device="free\u200bzer"),
        Case("device with a BOM", b"1.5", 0, "U+FEFF", device="\ufefffreezer"),
        Case("device of 256 characters", b"1.5", 1, device="d" * 256),
        Case("device of 257 characters", b"1.5", 0, "longer than 256", device="e" * 257),
        Case("topic of 2000 characters", b"1.5", 0, "longer than 1024", device="t" * 2000),
    ]
    if big:
        pack = _j([{"n": "temperature", "u": "Cel", "v": 1.5, "t": -i} for i in range(100_000)])
        cases += [
            Case("10 MB payload (defect 2)", b"7" * 10_000_000, 0, "exceeds the limit of 65536"),
            Case("SenML pack of 100,000 (defect 2)", pack, 0, "exceeds the limit of 65536"),
        ]
    return cases


def outcome(payload: bytes, *, device: str, received_at: float, limits: PayloadLimits = LIMITS) -> int | str:
    """Readings the bridge's translator makes of ``payload`` on ``device``'s topic, or its dead
    letter's reason.

    The oracle of the fuzz runs: the bridge must yield exactly this per message.
    """
    out = Translator(_TEMPLATE, readings_topic="r", deadletter_topic="d", limits=limits).translate(
        f"p/{device}/temperature", payload, received_at=received_at
    )
    return len(out.records) if out.error is None else out.error


_TEMPLATE = TopicTemplate("p/{device_id}/{metric}")


# -- the fuzzer ----------------------------------------------------------------------------------

_TOKENS = [
    b"1" + b"0" * 400, b"-0", b"1e309", b"NaN", b"null", b"true", b'"\\u0000"', b'"\\ud800"', b"\xff",
    b"\xef\xbb\xbf", b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b"9223372036854775808", b"1e19",
    b'"2025-13-45T99:99:99Z"', b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", b'{"v":1}', b"\x00",
]  # fmt: skip


def _valid(rng: random.Random, now: float) -> bytes:
    """A valid reading in one of the accepted shapes, its ts an hour around now at most."""
    value = rng.choice([rng.uniform(-40, 40), rng.uniform(-1e6, 1e6), 0.0, -0.0])
    ts = now - rng.uniform(0, 3600)
    shape = rng.randrange(7)
    if shape == 0:
        return _j({"value": value, "ts": ts, "seq": rng.randrange(2**40), "unit": "C"})
    if shape == 1:
        return _j({"temp": value * 9 / 5 + 32, "ts": int(ts * 1000), "unit": "F"})
    if shape == 2:
        return _j({"temperature": value + 273.15, "timestamp": _iso(ts), "unit": "K"})
    if shape == 3:
        return repr(value).encode()
    if shape == 4:
        return _j([{"n": "temperature", "u": "Cel", "v": value, "t": ts}])
    if shape == 5:
        n = rng.randrange(1, 20)
        return _j(
            [{"bn": "x/", "bt": ts, "bu": "Cel", "v": value}] + [{"t": -i, "v": value} for i in range(1, n)]
        )
    return _j({"value": value, "ts": int(ts * 1e6)})


def _tree(rng: random.Random, depth: int) -> Any:
    """A random JSON document, sometimes nested past the depth limit."""
    kind = rng.randrange(10 if depth < 40 else 5)
    if kind == 0:
        return rng.choice([0, -0.0, 1.5, 10 ** rng.randrange(1, 400), -(2**63), 2**64, 1e308, 5e-324])
    if kind == 1:
        return rng.choice(
            ["", "C", "°F", "\u0000", "\u2028", "😀", "x" * rng.randrange(300), "2025-01-01T00:00:00Z"]
        )
    if kind == 2:
        return rng.choice([None, True, False])
    if kind in (3, 4):
        return rng.choice([1.5, "K", None, 12])
    if kind in (5, 6, 7):
        keys = ["value", "ts", "seq", "unit", "temp", "v", "t", "bt", "bn", "n", "device_id", "metric", "x"]
        return {rng.choice(keys): _tree(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_tree(rng, depth + 1) for _ in range(rng.randrange(4))]


def _mutate(rng: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[at:at] = rng.choice(_TOKENS)
        elif op == 2:
            del data[at : at + rng.randrange(1, 8)]
        else:
            data = data[:at]
    return bytes(data)


def fuzz_payloads(rng: random.Random, now: float, cases: list[Case]) -> Iterator[bytes]:
    """Endless fuzzed payloads: valid ones, catalogue cases, mutations, random trees and bytes."""
    small = [case.payload for case in cases if len(case.payload) <= 70_000]
    makers: list[Callable[[], bytes]] = [
        lambda: _valid(rng, now),
        lambda: _valid(rng, now),
        lambda: rng.choice(small),
        lambda: _mutate(rng, _valid(rng, now)),
        lambda: _mutate(rng, rng.choice(small)),
        lambda: _j(_tree(rng, 0)),
        lambda: rng.randbytes(rng.randrange(64)),
    ]
    while True:
        yield rng.choice(makers)()


def stable_outcome(payload: bytes, *, device: str, now: float, slack: float = 300.0) -> int | None:
    """Readings the payload must yield (0: a dead letter), or None when that would change within
    ``slack`` seconds of ``now``.

    A fuzzed timestamp can land next to an edge of the window; such payloads are left out, so the
    counts a run expects do not depend on when the bridge gets to them.
    """
    first = expected_outcome(payload, device=device, now=now, slack=slack)
    if first is None:
        return None
    return first if isinstance(first, int) else 0


# -- hypothesis --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(["value", "temp", "temperature", "ts", "timestamp", "time", "seq", "unit", "u",
                         "device_id", "metric", "v", "t", "bt", "bv", "bn", "bu", "n", "vs"])  # fmt: skip
_readingish = st.dictionaries(_keys, json_values, max_size=6)
#: Payloads: raw bytes, any JSON, objects and SenML packs made of the keys the codec reads.
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(msgspec.json.encode),
    _readingish.map(msgspec.json.encode),
    st.lists(_readingish, max_size=5).map(msgspec.json.encode),
    st.text(max_size=50).map(str.encode),
)


# -- outcomes by class ---------------------------------------------------------------------------

#: Dead-letter reasons by class, first match wins (the fuzz report's outcome table).
REASON_CLASSES: list[tuple[tuple[str, ...], str]] = [
    (("internal error",), "internal error (a codec bug)"),
    (("MQTT topic",), "topic too long"),
    (("exceeds the limit",), "payload too large"),
    (("nesting is deeper",), "JSON nested too deep"),
    (("not valid UTF-8",), "not UTF-8"),
    (("not valid JSON",), "malformed JSON"),
    (("neither JSON nor a number",), "neither JSON nor a number"),
    (("not an object, number or SenML",), "wrong JSON type"),
    (("SenML pack", "is a ", "SenML record"), "SenML structure"),
    (("device id", "metric"), "bad device id or metric"),
    (("too large for a number",), "integer too large for a float"),
    (("not a finite number",), "value not finite"),
    (("`seq`",), "seq not an int64"),
    (("ahead of the receive time",), "ts too far ahead"),
    (("before the receive time",), "ts too old"),
    (("not a finite time", "non-negative", "RFC 3339", "out of range"), "ts unparseable"),
    (("unknown unit",), "unknown unit"),
    (("must be a number", "must be a string", "must be an integer"), "wrong field type"),
    (("no `value`", "no value", "no numeric value", "no record with a value"), "no value"),
]


def reason_class(reason: str) -> str:
    """The class of a dead letter's reason, for a table of outcomes."""
    for words, name in REASON_CLASSES:
        if any(word in reason for word in words):
            return name
    return "other"


def expected_outcome(payload: bytes, *, device: str, now: float, slack: float = 300.0) -> str | int | None:
    """Readings (an int) or the dead letter's reason class (a str) the bridge must make of it.

    None when the outcome would change within ``slack`` seconds of ``now``.
    """
    first = outcome(payload, device=device, received_at=now)
    if first != outcome(payload, device=device, received_at=now + slack):
        return None
    return first if isinstance(first, int) else reason_class(first)
