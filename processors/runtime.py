"""The function runtime's registry: stateless functions over reading batches, bound to topics.

A function takes one :class:`~thermoflow.processors.columns.ReadingBatch` (columns) and returns the events
to emit, each with its key. It never sees Kafka: the worker (``thermoflow.processors.app``) consumes the
source topic in batches, decodes them, calls the function (retrying with backoff), sends the
results to the sink topic and only then lets the offsets be committed::

    from thermoflow.processors.runtime import Emit, registry, setting

    @registry.function(name="too-hot", source=setting("readings_topic"), sink="telemetry.hot")
    def too_hot(batch: ReadingBatch) -> list[Emit]:
        hot = np.flatnonzero(batch.columns.values > 90.0)
        return [Emit(key=batch.device_id(i), event=..., partition=..., offset=...) for i in hot]

Run it with ``thermoflow process --functions my_package.my_module``. A function that needs
the settings (the threshold check reads the rules file) registers a factory with
:meth:`Registry.factory` instead. A function object may also have a ``tick()`` method: the
worker calls it every ``rules_poll_interval`` seconds between batches (the threshold check
reloads its rules file there, so a change is logged even while no reading arrives).

A function with state outside it (:class:`Stateful`, the device detectors) also gets its
partitions' state loaded before a batch, dropped when they are revoked, and a timer.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import msgspec
from tenacity import AsyncRetrying, RetryError, stop_after_attempt, wait_exponential

from thermoflow.processors.columns import ReadingBatch
from thermoflow.processors.settings import ProcessorSettings


@dataclass(frozen=True, slots=True)
class Emit:
    """One event a function emits to its sink, with its Kafka key, headers, and (for logs) where
    its reading came from."""

    key: str
    event: msgspec.Struct
    partition: int | None = None
    offset: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


FunctionBody = Callable[[ReadingBatch], Sequence[Emit]]


@runtime_checkable
class Stateful(Protocol):
    """A function whose state lives in Kafka, per source partition; the worker calls these hooks."""

    def __call__(self, batch: ReadingBatch) -> Sequence[Emit]: ...

    async def load(self, partitions: Collection[int]) -> None:
        """Before a batch: make the state of these source partitions current (read it if needed)."""

    def revoked(self, partitions: Collection[int]) -> None:
        """These source partitions went to another worker: forget their state."""

    def on_timer(self, *, now: float, caught_up: Callable[[int], bool]) -> Sequence[Emit]:
        """Every ``watermark_interval``: what time alone detects (``now`` is the wall clock)."""

    def persist(self) -> Awaitable[None]:
        """Take the state changed since the last call, at the call; the awaitable returned writes
        it and returns once every record of it is acked.

        Called every ``state_interval`` (after a batch, or by the timer), not per batch, with
        every event those changes imply already acked: the batches since the last call keep
        their offsets uncommitted until the write is done. Stored state is never ahead of the
        alerts it implies: a crash before that replays those batches from the old state and
        sends the same alert ids again. The worker processes the next batch while the write
        waits, so the state must be taken at the call, not when the awaitable first runs.
        """


TopicRef = str | Callable[[ProcessorSettings], str]


def setting(name: str) -> Callable[[ProcessorSettings], str]:
    """A topic named by a setting, e.g. ``setting("alerts_topic")``, resolved when the worker starts."""

    def resolve(settings: ProcessorSettings) -> str:
        return str(getattr(settings, name))

    resolve.__name__ = f"setting({name!r})"
    return resolve


@dataclass(frozen=True)
class FunctionSpec:
    """A registered function: its name, its topics, and how to build it from the settings."""

    name: str
    source: TopicRef
    sink: TopicRef
    build: Callable[[ProcessorSettings], FunctionBody]

    def source_topic(self, settings: ProcessorSettings) -> str:
        return self.source if isinstance(self.source, str) else self.source(settings)

    def sink_topic(self, settings: ProcessorSettings) -> str:
        return self.sink if isinstance(self.sink, str) else self.sink(settings)


class Registry:
    """The functions a worker runs, by name."""

    def __init__(self) -> None:
        self._specs: dict[str, FunctionSpec] = {}

    def add(self, spec: FunctionSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"a function named {spec.name!r} is already registered")
        self._specs[spec.name] = spec

    def function(
        self, *, source: TopicRef, sink: TopicRef, name: str | None = None
    ) -> Callable[[FunctionBody], FunctionBody]:
        """Register a plain function ``(batch) -> events``."""

        def register(body: FunctionBody) -> FunctionBody:
            self.add(FunctionSpec(name or body.__name__, source, sink, lambda _settings: body))
            return body

        return register

    def factory(
        self, *, name: str, source: TopicRef, sink: TopicRef
    ) -> Callable[[Callable[[ProcessorSettings], FunctionBody]], Callable[[ProcessorSettings], FunctionBody]]:
        """Register a function built from the settings when the worker starts."""

        def register(
            build: Callable[[ProcessorSettings], FunctionBody],
        ) -> Callable[[ProcessorSettings], FunctionBody]:
            self.add(FunctionSpec(name, source, sink, build))
            return build

        return register

    def specs(self) -> list[FunctionSpec]:
        return list(self._specs.values())


#: The registry `thermoflow process` runs: the threshold check, plus what ``--functions`` modules add.
registry = Registry()


def import_functions(modules: Sequence[str]) -> None:
    """Import the modules that register functions; a bad name fails with the module named."""
    import thermoflow.processors.functions  # noqa: F401  (registers the threshold check)

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"cannot import functions module {module!r}: {exc}") from exc


class FunctionFailed(Exception):
    """A function kept raising on one batch; ``__cause__`` is its last error."""


async def call_with_retries(
    body: FunctionBody,
    batch: ReadingBatch,
    *,
    attempts: int,
    backoff: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Sequence[Emit]:
    """Call ``body(batch)``, retrying with exponential backoff; raise :class:`FunctionFailed` at the end.

    The first call is made directly: building tenacity's retrying machinery cost about 40-90 µs
    per batch (a worker cuts about ten batches a second at a steady 5,000 readings/s), and it
    is only needed once a call has failed. The schedule is tenacity's, that first failure counted.
    """
    try:
        return body(batch)
    except Exception as exc:  # noqa: BLE001  # any error is retried, as tenacity would
        failed: Exception | None = exc

    def again(batch: ReadingBatch) -> Sequence[Emit]:
        nonlocal failed
        if failed is not None:  # tenacity's first attempt is the call that already failed
            error, failed = failed, None
            raise error
        return body(batch)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=backoff, max=max(backoff, 30.0)),
        sleep=sleep,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return again(batch)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise FunctionFailed(f"failed {attempts} time(s): {last!r}") from last
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover
