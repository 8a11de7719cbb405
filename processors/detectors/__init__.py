"""The device detectors of issue 13, pure and vectorized: stuck, rate, outlier, offline (and ingest_silent).

No faust, Kafka or clock here: a batch of readings as columns and its devices' state in,
detections and the new state out (:func:`detect`); the offline check is a separate pure
function of an event-time ``now`` for the caller's timer (:func:`offline`). The state is
plain columns (:class:`DeviceStates`) that store one compact msgpack record per device
(:class:`DeviceState`), for a faust table or a compacted topic keyed by device.

The modules, in the order a batch meets them:

- :mod:`~thermoflow.processors.detectors.config`: settings per rule, compiled to arrays;
- :mod:`~thermoflow.processors.detectors.grouping`: group by device, drop late and duplicate readings;
- :mod:`~thermoflow.processors.detectors.stuck`: greedy runs within a tolerance;
- :mod:`~thermoflow.processors.detectors.history`: one reading per time bucket; rate and outlier over it;
- :mod:`~thermoflow.processors.detectors.detect`: findings per reading, the worst per (device, kind);
- :mod:`~thermoflow.processors.detectors.offline`: offline and ingest_silent;
- :mod:`~thermoflow.processors.detectors.state`: the state columns and their stored form.
"""

from thermoflow.processors.detectors.config import (
    HISTORY,
    KINDS,
    NO_DETECTORS,
    CompiledDetectors,
    DetectorConfig,
    DetectorConfigError,
    OutlierConfig,
    RateConfig,
    StuckConfig,
    compile_detectors,
)
from thermoflow.processors.detectors.detect import Detections, Findings, Readings, detect, scan, worst
from thermoflow.processors.detectors.offline import IngestSilence, ingest_silent, offline
from thermoflow.processors.detectors.state import RECORD_SIZE, DeviceState, DeviceStates, readable

__all__ = [
    "HISTORY",
    "KINDS",
    "NO_DETECTORS",
    "RECORD_SIZE",
    "CompiledDetectors",
    "Detections",
    "DetectorConfig",
    "DetectorConfigError",
    "DeviceState",
    "DeviceStates",
    "Findings",
    "IngestSilence",
    "OutlierConfig",
    "RateConfig",
    "Readings",
    "StuckConfig",
    "compile_detectors",
    "detect",
    "ingest_silent",
    "offline",
    "readable",
    "scan",
    "worst",
]
