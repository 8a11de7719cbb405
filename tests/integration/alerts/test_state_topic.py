"""The notifier's state topic on real Kafka: what any producer wrote there cannot crash-loop it."""

from __future__ import annotations

from tests.conftest import unique_name
from tests.integration.alerts.helpers import produce
from tests.support.fakes import make_alert
from thermoflow import kafka
from thermoflow.alerts.kafka_io import ensure_state_topic, load_states, write_states
from thermoflow.alerts.lifecycle import Policy
from thermoflow.alerts.tracker import IncidentTracker
from thermoflow.settings import ThermoflowSettings


async def test_unreadable_state_records_read_as_no_state_and_the_good_ones_load(
    settings: ThermoflowSettings,
) -> None:
    # load_states reads the topic whole at every notifier start: a record it raised on
    # (a RecursionError from msgspec) stopped the notifier, and its restart read it again.
    topic = unique_name("state")
    await ensure_state_topic(settings, topic)
    tracker = IncidentTracker(Policy(resolve_after=60.0, repeat_interval=120.0))
    tracker.on_alert(make_alert("freezer-1", 100.0, value=-3.0), now=100.0)
    [incident] = tracker.take_changed()
    producer = kafka.producer(settings)
    await producer.start()
    try:
        await write_states(producer, topic, [incident])
    finally:
        await producer.stop()
    deep = b'{"incident_id": "x", "extra": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    await produce(settings, topic, [deep, b"[" * 50_000, b"\x00\xff", b"null"])  # keyed b"garbage"

    assert await load_states(settings, topic) == [incident]
