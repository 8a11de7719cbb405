"""Offline devices and silent ingest: pure functions of event time, for the caller's timer.

**What "now" is.** Neither function reads a clock. ``offline`` takes ``now`` as the
*event-time watermark of the device's partition*: the largest ``received_at`` the worker
has processed from that partition. A worker that is behind, stopped or restarting has a
watermark that is behind too, so it never declares a device offline because the
*pipeline* lagged: after a 60 s stop it replays the backlog and the watermark walks
through it. A device is offline when the rest of its partition has moved on
``offline_after`` seconds past its last reading.

If the whole partition goes quiet its watermark stops, so no device of it goes offline;
that is ``ingest_silent``'s case, the one place where wall-clock time enters: the caller
passes the wall clock and whether the partition's consumer is caught up (no lag), and a
caught-up partition whose watermark is ``silent_after`` behind the wall clock is silent.
When every partition given is silent, that is one fleet-wide detection, not one per
partition (and never one per device).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thermoflow.processors.detectors.config import F64, I64, OFFLINE, CompiledDetectors
from thermoflow.processors.detectors.detect import Detections
from thermoflow.processors.detectors.grouping import Mask


def offline(
    *, now: float, last_seen: F64, reported: F64, config: CompiledDetectors, rows: I64
) -> tuple[Detections, F64]:
    """Devices silent for at least their ``offline_after``, not yet reported for this silence.

    ``last_seen``, ``reported`` (the state's ``offline_reported``) and ``rows`` are per
    device. Returns the detections, evidence ``reading_ts`` = the device's ``last_seen`` (so
    every tick during one silence yields the same alert id), ``value`` = seconds silent and
    ``threshold`` = ``offline_after``; and the new ``reported`` to store. A device reporting
    again has a new ``last_seen``, so its next silence is reported anew; the incident itself
    resolves on that reading, in the alert store.

    >>> from thermoflow.processors.detectors.config import DetectorConfig, compile_detectors
    >>> config = compile_detectors([DetectorConfig(offline_after=30.0)])
    >>> found, reported = offline(now=100.0, last_seen=np.array([60.0, 80.0, np.nan]),
    ...     reported=np.full(3, np.nan), config=config, rows=np.zeros(3, np.int64))
    >>> found.device.tolist(), found.value.tolist(), found.reading_ts.tolist(), reported.tolist()
    ([0], [40.0], [60.0], [60.0, nan, nan])
    >>> offline(now=101.0, last_seen=np.array([60.0]), reported=reported[:1], config=config,
    ...         rows=np.zeros(1, np.int64))[0].device.tolist()  # already reported
    []
    """
    after = config.offline_after[rows]
    silent = now - last_seen
    fire = np.flatnonzero((silent >= after) & (reported != last_seen))  # NaN last_seen: never seen
    updated = reported.copy()
    updated[fire] = last_seen[fire]
    return (
        Detections(
            device=fire.astype(np.int64),
            kind=np.full(fire.size, OFFLINE, dtype=np.int64),
            severity=config.offline_severity[rows[fire]],
            value=silent[fire],
            threshold=after[fire],
            reading_ts=last_seen[fire],
            reading=np.full(fire.size, -1, dtype=np.int64),
        ),
        updated,
    )


@dataclass(frozen=True, slots=True)
class IngestSilence:
    """A silent partition, or (``partition`` None) every partition the caller owns at once."""

    partition: int | None
    silent_for: float  # seconds: the alert's value
    since: float  # the watermark (last received_at): the evidence's time, stable across ticks
    silent_after: float  # the alert's threshold


def ingest_silent(
    *, now: float, partitions: I64, watermark: F64, caught_up: Mask, silent_after: float
) -> list[IngestSilence]:
    """Silent partitions: caught up, and nothing received for ``silent_after`` wall-clock seconds.

    A partition never heard from (NaN watermark) is not judged: there is no evidence to
    date the silence by. A lagging partition is the consumer's problem (``consumer_lag``),
    not the ingest's. A partition is singled out only while another one was heard from within
    ``silent_after / 2`` (or has readings waiting): when a whole fleet stops, its partitions
    cross ``silent_after`` a moment apart, and that is one fleet-wide detection, not one per
    partition first.

    >>> ingest_silent(now=100.0, partitions=np.array([0, 1]), watermark=np.array([50.0, 99.0]),
    ...               caught_up=np.array([True, True]), silent_after=30.0)
    [IngestSilence(partition=0, silent_for=50.0, since=50.0, silent_after=30.0)]
    >>> ingest_silent(now=100.0, partitions=np.array([0, 1]), watermark=np.array([50.0, 60.0]),
    ...               caught_up=np.array([True, True]), silent_after=30.0)
    [IngestSilence(partition=None, silent_for=40.0, since=60.0, silent_after=30.0)]
    >>> ingest_silent(now=100.0, partitions=np.array([0, 1]), watermark=np.array([69.0, 80.0]),
    ...               caught_up=np.array([True, True]), silent_after=30.0)  # partition 1 is fading too
    []
    """
    silent = caught_up & (now - watermark >= silent_after)
    if silent.size and silent.all():
        since = float(watermark.max())
        return [IngestSilence(partition=None, silent_for=now - since, since=since, silent_after=silent_after)]
    if not ((now - watermark < silent_after / 2) | ~caught_up).any():
        return []  # nothing heard lately, nothing waiting: the whole fleet is falling silent
    return [
        IngestSilence(
            partition=int(partitions[at]),
            silent_for=float(now - watermark[at]),
            since=float(watermark[at]),
            silent_after=silent_after,
        )
        for at in np.flatnonzero(silent)
    ]
