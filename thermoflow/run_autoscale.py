"""`thermoflow run --autoscale`: the flags made into each component's policy, group and topic.

App layer: it reads the components' settings (their consumer groups); the policy itself is
:mod:`thermoflow.autoscale` and the scaling is done by :class:`thermoflow.supervisor.Supervisor`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import replace

from thermoflow import autoscale
from thermoflow.lag import GroupLag
from thermoflow.run_plan import PlanError
from thermoflow.settings import ThermoflowSettings, load_settings
from thermoflow.supervisor import Autoscaled


def _group_and_topic(component: str) -> tuple[str, str]:
    """The consumer group and topic whose lag ``component`` scales on, from its settings."""
    if component == "processor":
        from thermoflow.processors.settings import ProcessorSettings

        processor = load_settings(ProcessorSettings)
        return processor.processor_group, processor.readings_topic
    if component == "sink":
        from thermoflow.ingest.settings import IngestSettings

        ingest = load_settings(IngestSettings)
        return ingest.sink_group, ingest.readings_topic
    from thermoflow.alerts.settings import AlertsSettings

    alerts = load_settings(AlertsSettings)
    return (alerts.store_group if component == "store" else alerts.notify_group), alerts.alerts_topic


def parse_lag_overrides(values: Iterable[str]) -> dict[str, int]:
    """Parse ``--autoscale-lag sink=1000`` values.

    >>> parse_lag_overrides(["sink=1000"])
    {'sink': 1000}
    """
    overrides: dict[str, int] = {}
    for value in values:
        component, sep, text = value.partition("=")
        if not sep or component not in autoscale.POLICIES or not text.isdigit() or int(text) < 1:
            raise PlanError(
                f"--autoscale-lag takes COMPONENT=N with N at least 1 and COMPONENT one of"
                f" {', '.join(autoscale.POLICIES)}; got {value!r}"
            )
        overrides[component] = int(text)
    return overrides


def autoscale_plan(
    *,
    autoscale: Iterable[str],
    lag_overrides: Iterable[str],
    scale: Mapping[str, int],
    only: Iterable[str],
    poll: float | None,
    cooldown: float | None,
) -> dict[str, Autoscaled]:
    """Each autoscaled component's policy (within the given bounds and overrides) and its lag source.

    Raises :class:`PlanError` for a component both scaled and autoscaled, autoscaled but left
    out by ``--only``, or a lag override of a component that is not autoscaled.
    """
    from thermoflow import autoscale as policy_module

    try:
        bounds = policy_module.parse_autoscale(autoscale)
    except policy_module.AutoscaleError as exc:
        raise PlanError(str(exc)) from None
    both = sorted(set(bounds) & set(scale))
    if both:
        raise PlanError(
            f"{', '.join(both)}: --scale fixes the instance count and --autoscale varies it; give one"
        )
    chosen = set(only)
    left_out = sorted(name for name in bounds if chosen and name not in chosen)
    if left_out:
        raise PlanError(f"--autoscale {', '.join(left_out)}, but --only leaves it out")
    overrides = parse_lag_overrides(lag_overrides)
    stray = sorted(set(overrides) - set(bounds))
    if stray:
        raise PlanError(f"--autoscale-lag {', '.join(stray)}: not autoscaled (add --autoscale)")
    plans: dict[str, Autoscaled] = {}
    for component, (low, high) in bounds.items():
        policy = policy_module.with_bounds(policy_module.POLICIES[component], low=low, high=high)
        if component in overrides:
            policy = replace(policy, lag_threshold=overrides[component])
        if poll is not None:
            policy = replace(policy, polling_interval=poll)
        if cooldown is not None:
            policy = policy_module.with_cooldown(policy, cooldown)
        group, topic = _group_and_topic(component)
        plans[component] = Autoscaled(policy=policy, group=group, topic=topic)
    return plans


@contextlib.asynccontextmanager
async def group_lag(*, enabled: bool) -> AsyncIterator[GroupLag | None]:
    """The lag reader `thermoflow run` shares between its autoscaled components (None: none)."""
    if not enabled:
        yield None
        return
    reader = GroupLag(load_settings(ThermoflowSettings))
    try:
        yield reader
    finally:
        await reader.close()
