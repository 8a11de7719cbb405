"""Acknowledge an incident: the one function `thermoflow alerts ack` and the console both call.

An acknowledgement has two readers. The store's ``incidents`` row (status, who, when, the note)
is what operators list; the notifier, which never reads the database, hears of it from an
:class:`~thermoflow.events.Ack` record on ``telemetry.alerts`` (header ``kind: ack``, the
device's key, so on the partition of the device's alerts and after the ones that opened the
incident): it tells the channels once and stops repeating the incident. The record is sent and
acknowledged by Kafka inside the database transaction that marks the row, before it commits,
so there is no acknowledged row the notifier never heard of: if Kafka cannot take the record,
nothing is stored and the operator can try again. (A crash between Kafka's ack and the commit
can send a record for an ack that is not stored; a retry then sends a second one, which the
notifier ignores, as it ignores any ack of an incident already acknowledged.) The store reads
the record and leaves it: it has the ack already.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from thermoflow import db, kafka, reach
from thermoflow.alerts.queries import IncidentRow, acknowledge
from thermoflow.events import ACK_HEADERS, Ack, encode
from thermoflow.settings import ThermoflowSettings

#: Seconds the ack record may take to reach Kafka before the acknowledgement is given up (and not stored).
SEND_TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class Acknowledgement:
    """The incident after an acknowledgement; ``new`` is False when it was acknowledged already
    (a double click): nothing changed and nothing was sent."""

    incident: IncidentRow
    new: bool


async def send_ack(settings: ThermoflowSettings, ack: Ack) -> None:
    """Put ``ack`` on the alerts topic and wait until Kafka has it (acks=all)."""
    producer = kafka.producer(settings, linger_ms=0)
    try:
        await producer.start()  # inside: a producer that failed to start is stopped too
        sent = await producer.send(
            settings.alerts_topic, encode(ack), key=ack.device_id.encode(), headers=list(ACK_HEADERS)
        )
        await sent
    finally:
        await producer.stop()


def acknowledge_incident(
    settings: ThermoflowSettings, incident_id: str, *, by: str, note: str = ""
) -> Acknowledgement:
    """Acknowledge a firing incident in the database and tell the notifier, once.

    Blocking (it runs its own event loop for the Kafka send): from async code, call
    :func:`acknowledge_incident_async`.

    Raises:
        thermoflow.alerts.queries.InvalidAck: ``by`` empty, or the note (at most
            :data:`~thermoflow.events.ACK_NOTE_MAX` characters) or ``by`` not plain text.
        thermoflow.alerts.queries.AckError: no such incident, or it is resolved.
        thermoflow.errors.ServiceError: PostgreSQL or Kafka unreachable (nothing was stored).
    """
    sent: list[Ack] = []

    def announce(ack: Ack) -> None:
        with reach.needs(reach.kafka(settings)):
            asyncio.run(asyncio.wait_for(send_ack(settings, ack), SEND_TIMEOUT))
        sent.append(ack)

    with reach.needs(reach.database(settings)), db.connect(settings) as conn:
        row = acknowledge(conn, incident_id, by=by, note=note, announce=announce)
    return Acknowledgement(incident=row, new=bool(sent))


async def acknowledge_incident_async(
    settings: ThermoflowSettings, incident_id: str, *, by: str, note: str = ""
) -> Acknowledgement:
    """:func:`acknowledge_incident` in a worker thread, for a web handler's event loop."""
    return await asyncio.to_thread(acknowledge_incident, settings, incident_id, by=by, note=note)
