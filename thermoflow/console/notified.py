"""What the notifier has sent per incident, read from its own compacted state topic.

The notifier keeps no table: it persists the latest state of each (device, rule, kind) incident
to ``notifier_state_topic`` (:mod:`thermoflow.alerts.kafka_io`), with ``seq`` (how many
transitions it has notified: fire, escalations, repeats, resolve) and ``notified_at`` (the last
fire, escalation or repeat). The console follows that topic from its start, so the incident page
can say how many notifications went out. Only the latest incident of each key is there: for an
older one of the same device, rule and kind, the page says nothing is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from thermoflow.alerts.lifecycle import decode_incident
from thermoflow.console.follow import TopicFollower
from thermoflow.kafka import partition_counts
from thermoflow.settings import ThermoflowSettings


@dataclass(frozen=True)
class Notified:
    sent: int  # transitions notified
    last_at: float | None  # the last fire, escalation or repeat
    resolved_at: float | None


class NotifierState(TopicFollower):
    """The notifier's persisted incident states by incident id, kept current by a task."""

    name = "notifier-state"

    def __init__(self, settings: ThermoflowSettings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self._by_key: dict[bytes, str] = {}
        self._by_id: dict[str, Notified] = {}

    def get(self, incident_id: str) -> Notified | None:
        return self._by_id.get(incident_id)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the state topic: the key's latest state, or its removal (a tombstone)."""
        if key is None:
            return
        old = self._by_key.pop(key, None)
        if old is not None:
            self._by_id.pop(old, None)
        if value is None:
            return
        incident = decode_incident(value)
        if incident is None:
            return  # not the notifier's: nothing to show for it
        self._by_key[key] = incident.incident_id
        self._by_id[incident.incident_id] = Notified(incident.seq, incident.notified_at, incident.resolved_at)

    async def _follow(self) -> None:
        count = (await partition_counts(self.settings, [self.topic], timeout=10.0)).get(self.topic)
        if not count:
            raise LookupError(f"topic {self.topic} not found (no notifier has run yet)")
        consumer = AIOKafkaConsumer(
            **self.settings.kafka_options(), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=500
        )
        try:
            await consumer.start()
            partitions = [TopicPartition(self.topic, p) for p in range(count)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while True:
                batches: dict[TopicPartition, list[Any]] = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        self.apply(record.key, record.value)
        finally:
            await consumer.stop()
