"""The pure part of `thermoflow run`: which processes to run and when to restart them.

No processes, no clock of its own: :mod:`thermoflow.supervisor` does the I/O around it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from thermoflow.component import EXIT_STOP_TIMEOUT
from thermoflow.watchdog import EXIT_STALLED

#: Every pipeline component and the `thermoflow` arguments that start one instance of it.
COMPONENTS: Final[Mapping[str, tuple[str, ...]]] = {
    "bridge": ("bridge",),
    "processor": ("process",),
    "sink": ("sink",),
    "store": ("alerts", "store"),
    "notifier": ("alerts", "notify"),
}


class PlanError(ValueError):
    """A --scale or --only value that names no component or no sensible count."""


@dataclass(frozen=True)
class Instance:
    """One supervised process: ``processor-2`` is the second processor worker."""

    component: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.component}-{self.index}"

    @property
    def args(self) -> tuple[str, ...]:
        return COMPONENTS[self.component]


def parse_scale(values: Iterable[str]) -> dict[str, int]:
    """Parse ``--scale processor=3`` values.

    >>> parse_scale(["processor=3", "sink=2"])
    {'processor': 3, 'sink': 2}
    """
    scale: dict[str, int] = {}
    for value in values:
        component, sep, count = value.partition("=")
        if not sep or component not in COMPONENTS:
            raise PlanError(
                f"--scale takes COMPONENT=N with COMPONENT one of {', '.join(COMPONENTS)}; got {value!r}"
            )
        if not count.isdigit() or not 0 <= int(count) <= 64:
            raise PlanError(f"--scale {component}= takes a whole number from 0 to 64; got {count!r}")
        scale[component] = int(count)
    return scale


def plan(*, scale: Mapping[str, int], only: Iterable[str] = ()) -> list[Instance]:
    """The instances to run: one of each component (or ``only`` those), times their scale."""
    chosen = list(only) or list(COMPONENTS)
    unknown = [name for name in chosen if name not in COMPONENTS]
    if unknown:
        raise PlanError(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    instances = [
        Instance(component, index)
        for component in COMPONENTS
        if component in chosen
        for index in range(1, scale.get(component, 1) + 1)
    ]
    if not instances:
        raise PlanError("nothing to run: every chosen component is scaled to 0")
    return instances


def http_ports(instances: Iterable[Instance], *, base: int | None, workers: int = 1) -> dict[str, int]:
    """Each instance its own ``/metrics`` port, from ``base`` up in plan order; none if ``base`` is 0.

    A processor instance takes ``workers`` ports (its worker *i* serves on its port + *i*).

    >>> ports = http_ports(plan(scale={"processor": 2}), base=9108, workers=2)
    >>> ports["bridge-1"], ports["processor-1"], ports["processor-2"], ports["sink-1"]
    (9108, 9109, 9111, 9113)
    >>> http_ports(plan(scale={}), base=0)
    {}
    """
    if not base:
        return {}
    ports: dict[str, int] = {}
    port = base
    for instance in instances:
        ports[instance.name] = port
        port += workers if instance.component == "processor" else 1
    if port - 1 > 65535:
        raise PlanError(
            f"THERMOFLOW_HTTP_PORT={base} leaves no room for {port - base} ports (the last would be"
            f" {port - 1}, above 65535); choose a lower port, or 0 to serve none"
        )
    return ports


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff between restarts, forgotten once a process has run long enough.

    >>> policy = RestartPolicy(initial=1.0, factor=2.0, ceiling=30.0, stable_after=60.0)
    >>> [policy.delay(failures) for failures in range(1, 7)]
    [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    """

    initial: float = 0.5
    factor: float = 2.0
    ceiling: float = 30.0
    stable_after: float = 60.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before restarting after the ``failures``-th crash in a row."""
        return float(min(self.ceiling, self.initial * self.factor ** max(0, failures - 1)))

    def failures_after(self, *, previous: int, ran_for: float) -> int:
        """The crash count after a crash: reset to 1 when the process had been stable."""
        return 1 if ran_for >= self.stable_after else previous + 1


def exit_reason(code: int) -> str:
    """Why a child ended, from its exit code (negative: the signal that killed it).

    >>> [exit_reason(code) for code in (0, 1, 3, 4, -9)]
    ['exited', 'crashed', 'stalled', 'stuck_on_stop', 'killed_by_SIGKILL']
    """
    if code < 0:
        try:
            return f"killed_by_{signal.Signals(-code).name}"
        except ValueError:
            return f"killed_by_signal_{-code}"
    return {0: "exited", EXIT_STALLED: "stalled", EXIT_STOP_TIMEOUT: "stuck_on_stop"}.get(code, "crashed")
