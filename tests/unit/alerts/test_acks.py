"""Acknowledgements in the notifier's pure parts: told once, repeats stop, the resolve still goes out,
replays and strangers change nothing; the Ack record's contract and the note's hostile-input rules."""

from __future__ import annotations

import msgspec
import pytest

from tests.support.fakes import make_alert
from thermoflow.alerts.channels import slack_message
from thermoflow.alerts.kafka_io import decode_event
from thermoflow.alerts.lifecycle import Incident, IncidentKey, Policy, ack_ignored, apply_ack
from thermoflow.alerts.notification import details, headline
from thermoflow.alerts.queries import InvalidAck, clean_ack_text
from thermoflow.alerts.tracker import IncidentTracker
from thermoflow.events import (
    ACK_HEADERS,
    CLEAR_HEADERS,
    Ack,
    EventDecodeError,
    encode,
)

POLICY = Policy(resolve_after=60.0, repeat_interval=100.0)
KEY: IncidentKey = ("f", "freezer-too-warm", "threshold")


def ack_of(incident: Incident, *, at: float, by: str = "ana", note: str = "door was open") -> Ack:
    return Ack(
        incident_id=incident.incident_id,
        device_id=incident.device_id,
        rule_id=incident.rule_id,
        incident_kind=incident.kind,
        opened_at=incident.opened_at,
        acknowledged_by=by,
        acknowledged_at=at,
        note=note,
    )


def firing(tracker: IncidentTracker, at: float = 0.0) -> Incident:
    tracker.on_alert(make_alert("f", at), now=at)
    return tracker.incidents[KEY]


def test_an_ack_is_told_once_with_who_and_the_note_and_ends_the_repeats_but_not_the_resolve() -> None:
    tracker = IncidentTracker(Policy(resolve_after=1_000.0, repeat_interval=100.0))
    incident = firing(tracker)
    assert [n.transition for n in tracker.on_tick(now=100.0)] == ["repeat"]

    [told] = tracker.on_ack(ack_of(incident, at=150.0), now=151.0)
    assert (told.transition, told.acknowledged_by, told.note, told.acknowledged_at) == (
        "acknowledged", "ana", "door was open", 150.0,
    )  # fmt: skip
    assert told.incident_id == incident.incident_id and told.seq == 3

    for now in (200.0, 300.0, 1_000.0, 5_000.0):
        assert tracker.on_tick(now=now) == []  # someone is on it
    tracker.on_alert(make_alert("f", 500.0), now=5_000.0)  # still breaching, same severity
    assert tracker.on_tick(now=9_000.0) == []
    [resolved] = tracker.on_watermark(partition=-1, watermark=1_500.0, now=9_000.0)
    assert resolved.transition == "resolve" and resolved.acknowledged_by == "ana"


def test_a_second_ack_record_or_a_replay_of_the_first_tells_nothing() -> None:
    tracker = IncidentTracker(POLICY)
    incident = firing(tracker)
    first = ack_of(incident, at=10.0)
    assert len(tracker.on_ack(first, now=10.0)) == 1
    assert tracker.on_ack(first, now=11.0) == []  # replayed
    assert tracker.on_ack(ack_of(incident, at=12.0, by="bob", note="me too"), now=12.0) == []
    assert tracker.incidents[KEY].acknowledged_by == "ana"  # the first one holds


def test_acks_of_unknown_resolved_or_superseded_incidents_are_ignored_and_say_why() -> None:
    tracker = IncidentTracker(POLICY)
    old = firing(tracker, at=0.0)
    stranger = msgspec.structs.replace(old, incident_id="not-an-incident")
    assert tracker.on_ack(ack_of(msgspec.structs.replace(old, device_id="g"), at=1.0), now=1.0) == []
    assert ack_ignored(None, ack_of(old, at=1.0)) == "unknown incident"
    assert tracker.on_ack(ack_of(stranger, at=1.0), now=1.0) == []

    tracker.on_watermark(partition=-1, watermark=60.0, now=60.0)  # resolves the first incident
    assert ack_ignored(tracker.incidents[KEY], ack_of(old, at=61.0)) == "incident already resolved"
    assert tracker.on_ack(ack_of(old, at=61.0), now=61.0) == []

    new = firing(tracker, at=100.0)  # a new incident of the same device, rule and kind
    reason = ack_ignored(new, ack_of(old, at=101.0))
    assert reason is not None and "not the latest incident" in reason
    assert tracker.on_ack(ack_of(old, at=101.0), now=101.0) == []
    assert not tracker.incidents[KEY].is_acknowledged
    assert [n.transition for n in tracker.on_tick(now=200.0)] == ["repeat"]  # the new one still repeats


def test_an_escalation_after_an_ack_is_told_and_the_repeats_resume() -> None:
    tracker = IncidentTracker(Policy(resolve_after=1_000.0, repeat_interval=100.0))
    incident = firing(tracker)
    tracker.on_ack(ack_of(incident, at=10.0), now=10.0)
    assert tracker.on_tick(now=150.0) == []
    [escalated] = tracker.on_alert(make_alert("f", 160.0, severity="critical"), now=160.0)
    assert escalated.transition == "escalate" and escalated.acknowledged_by is None
    assert [n.transition for n in tracker.on_tick(now=260.0)] == ["repeat"]
    # It can be acknowledged again, and that is told.
    [again] = tracker.on_ack(ack_of(tracker.incidents[KEY], at=270.0, by="bob", note=""), now=270.0)
    assert (again.transition, again.acknowledged_by, again.note) == ("acknowledged", "bob", "")


def test_an_ack_survives_a_restart_from_the_persisted_state() -> None:
    tracker = IncidentTracker(POLICY)
    incident = firing(tracker)
    ack = ack_of(incident, at=10.0)
    tracker.on_ack(ack, now=10.0)
    restored = IncidentTracker(POLICY, tracker.take_changed())
    assert restored.incidents[KEY].acknowledged_by == "ana"
    assert restored.on_tick(now=1_000.0) == []
    assert restored.on_ack(ack, now=1_000.0) == []  # the replayed record after a restart


def test_the_acknowledged_key_is_the_same_in_a_replay_whatever_repeats_came_before() -> None:
    quick, slow = IncidentTracker(POLICY), IncidentTracker(POLICY)
    incident = firing(quick)
    firing(slow)
    slow.on_tick(now=100.0)  # one more repeat went out before the ack here: another seq
    [a] = quick.on_ack(ack_of(incident, at=150.0), now=150.0)
    [b] = slow.on_ack(ack_of(incident, at=150.0), now=160.0)
    assert a.seq != b.seq and a.idempotency_key == b.idempotency_key


def test_apply_ack_is_pure_and_leaves_the_input_alone() -> None:
    tracker = IncidentTracker(POLICY)
    incident = firing(tracker)
    acknowledged, transitions = apply_ack(incident, ack_of(incident, at=5.0))
    assert [t.kind for t in transitions] == ["acknowledged"]
    assert acknowledged is not None and acknowledged.is_acknowledged and not incident.is_acknowledged


def test_a_state_persisted_before_acks_existed_reads_as_unacknowledged() -> None:
    old = (
        b'{"incident_id":"abc","device_id":"f","rule_id":"r","metric":"temperature","condition":"above",'
        b'"threshold":-10.0,"severity":"warning","opened_at":1.0,"last_breach_at":2.0,"peak_value":5.0,'
        b'"breach_count":2,"resolved_at":null,"notified_at":1.0,"seq":1,"partition":3}'
    )
    incident = msgspec.json.decode(old, type=Incident)
    assert not incident.is_acknowledged and incident.ack_note == ""


def test_ack_records_decode_by_their_header_and_bad_ones_name_the_problem() -> None:
    tracker = IncidentTracker(POLICY)
    good = ack_of(firing(tracker), at=10.0, note="line one\nline two")
    assert decode_event(encode(good), ACK_HEADERS) == good
    body = msgspec.json.decode(encode(good))

    def bad(**change: object) -> bytes:
        return msgspec.json.encode({**body, **change})

    with pytest.raises(EventDecodeError, match=r"invalid ack: .*length <= 1000 - at `\$\.note`"):
        decode_event(bad(note="x" * 1_001), ACK_HEADERS)
    with pytest.raises(EventDecodeError, match=r"invalid ack: note: control character U\+001B at position 3"):
        decode_event(bad(note="ok\x1b[2J"), ACK_HEADERS)
    with pytest.raises(EventDecodeError, match=r"invalid ack: acknowledged_by: control character U\+000A"):
        decode_event(bad(acknowledged_by="ana\nbob"), ACK_HEADERS)
    with pytest.raises(EventDecodeError, match=r"invalid ack: .*`\$\.acknowledged_at`"):
        decode_event(bad(acknowledged_at=None), ACK_HEADERS)
    with pytest.raises(EventDecodeError, match=r"invalid ack: .*missing required field `incident_id`"):
        decode_event(msgspec.json.encode({k: v for k, v in body.items() if k != "incident_id"}), ACK_HEADERS)
    with pytest.raises(EventDecodeError, match=r"invalid ack: .*incident_kind"):
        decode_event(bad(incident_kind="bogus"), ACK_HEADERS)
    with pytest.raises(EventDecodeError, match="invalid alert event"):
        decode_event(encode(good), None)  # without its header, an ack is a bad alert
    with pytest.raises(EventDecodeError, match="invalid clear"):
        decode_event(encode(good), CLEAR_HEADERS)


@pytest.mark.parametrize(
    ("note", "problem"),
    [
        ("x" * 1_001, "note is 1,001 characters long; at most 1,000 are allowed"),
        ("bell\x07", "note: control character U+0007 at position 5"),
        ("nul\x00", "note: control character U+0000"),
        ("c1\x9b31m", "note: control character U+009B"),
        ("abc\u202edcba", "note: control character U+202E"),  # a bidi override: reads other than it shows
        ("split\u2028here", "note: control character U+2028"),
        ("lone \udc80", "note: surrogate U+DC80"),
    ],
)
def test_hostile_notes_are_refused_with_the_reason(note: str, problem: str) -> None:
    with pytest.raises(InvalidAck, match=problem.replace("+", r"\+")):
        clean_ack_text(by="ana", note=note)


def test_plain_notes_are_kept_as_typed_apart_from_trimming_and_line_ends() -> None:
    assert clean_ack_text(by="ana", note="x" * 1_000) == ("ana", "x" * 1_000)
    assert clean_ack_text(by=" ana ", note=" door open\r\n\tclosed it; 3 °C ") == (
        "ana", "door open\n\tclosed it; 3 °C",
    )  # fmt: skip
    with pytest.raises(InvalidAck, match="must be named"):
        clean_ack_text(by="  ", note="")
    with pytest.raises(InvalidAck, match=r"by: control character U\+0009"):
        clean_ack_text(by="ana\tbob", note="")


def test_the_acknowledged_notification_reads_well_and_slack_shows_the_note_as_typed() -> None:
    tracker = IncidentTracker(POLICY)
    incident = firing(tracker)
    [told] = tracker.on_ack(ack_of(incident, at=60.0, note="<!channel> fixed & closed"), now=60.0)
    assert headline(told).startswith("[WARNING] ACKNOWLEDGED: f freezer-too-warm")
    assert details(told).splitlines()[-2:] == [
        "acknowledged by ana at 1970-01-01 00:01:00 UTC",
        "note: <!channel> fixed & closed",
    ]
    text = slack_message(told)["text"]
    assert "&lt;!channel&gt; fixed &amp; closed" in text and "<!channel>" not in text
