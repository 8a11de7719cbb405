"""The autoscaling policy of `thermoflow run --autoscale`, without processes or Kafka: the
formula, the cool-downs, the bounds, the flags, and that the KEDA ScaledObjects in
deploy/kubernetes carry the very numbers of :data:`thermoflow.autoscale.POLICIES`."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from thermoflow.autoscale import (
    POLICIES,
    AutoscaleError,
    ScalePolicy,
    ScaleState,
    decide,
    parse_autoscale,
    with_bounds,
    with_cooldown,
)
from thermoflow.run_autoscale import autoscale_plan
from thermoflow.run_plan import PlanError

BASE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base"

#: The ScaledObject of each autoscaled `thermoflow run` component.
MANIFESTS = {
    "processor": "processor.yaml",
    "sink": "sink.yaml",
    "store": "alerts-store.yaml",
    "notifier": "alerts-notify.yaml",
}

#: KEDA's and the HPA's defaults for fields a ScaledObject leaves out (keda.sh, kubernetes.io).
KEDA_DEFAULT_POLLING, KEDA_DEFAULT_COOLDOWN, KEDA_DEFAULT_ACTIVATION = 30, 300, 0


def scaled_object(component: str) -> dict[str, Any]:
    documents = list(yaml.safe_load_all((BASE / MANIFESTS[component]).read_text()))
    (found,) = [doc for doc in documents if doc and doc.get("kind") == "ScaledObject"]
    return dict(found)


@pytest.mark.parametrize("component", sorted(POLICIES))
def test_the_keda_objects_use_the_same_policy_as_thermoflow_run(component: str) -> None:
    spec = scaled_object(component)["spec"]
    (trigger,) = spec["triggers"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    (step,) = behavior["policies"]
    assert step["type"] == "Pods"
    in_manifest = ScalePolicy(
        min_replicas=spec["minReplicaCount"],
        max_replicas=spec["maxReplicaCount"],
        lag_threshold=int(trigger["metadata"]["lagThreshold"]),
        activation_lag_threshold=int(
            trigger["metadata"].get("activationLagThreshold", KEDA_DEFAULT_ACTIVATION)
        ),
        polling_interval=spec.get("pollingInterval", KEDA_DEFAULT_POLLING),
        scale_down_window=behavior["stabilizationWindowSeconds"],
        scale_down_step=step["value"],
        scale_down_period=step["periodSeconds"],
        cooldown_period=spec.get("cooldownPeriod", KEDA_DEFAULT_COOLDOWN),
    )
    assert in_manifest == POLICIES[component]


def test_every_lag_scaled_object_is_in_the_policies() -> None:
    scaled = {
        path.name
        for path in BASE.glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "ScaledObject"
    }
    assert scaled == set(MANIFESTS.values())


# -- the formula ------------------------------------------------------------------------------


@st.composite
def policies(draw: st.DrawFn) -> ScalePolicy:
    low = draw(st.integers(0, 6))
    return ScalePolicy(
        min_replicas=low,
        max_replicas=draw(st.integers(max(1, low), 12)),
        lag_threshold=draw(st.integers(1, 10_000)),
        activation_lag_threshold=draw(st.integers(0, 100)),
        scale_down_window=draw(st.sampled_from([0.0, 10.0, 300.0])),
        scale_down_period=draw(st.sampled_from([0.0, 5.0, 60.0])),
        cooldown_period=draw(st.sampled_from([0.0, 10.0, 300.0])),
    )


@given(policy=policies(), lag=st.integers(0, 10**9))
def test_desired_is_kedas_ceil_of_lag_over_threshold_within_the_bounds(policy: ScalePolicy, lag: int) -> None:
    wanted = -(-lag // policy.lag_threshold)  # integer ceil: no float rounding
    assert policy.desired(lag) == min(policy.max_replicas, max(1, policy.min_replicas, wanted))


@settings(max_examples=200)
@given(policy=policies(), lags=st.lists(st.integers(0, 200_000), min_size=1, max_size=40))
def test_every_decision_keeps_the_bounds_and_the_cool_downs(policy: ScalePolicy, lags: list[int]) -> None:
    state = ScaleState(replicas=policy.min_replicas)
    history: list[tuple[float, int, int]] = []  # (time, desired, replicas)
    for poll, lag in enumerate(lags):
        now = poll * 5.0
        before = state.replicas
        state = decide(policy, state, lag=lag, now=now)
        history.append((now, policy.desired(lag), state.replicas))
        assert policy.min_replicas <= state.replicas <= policy.max_replicas
        if state.replicas > before:  # up: at most what the lag asks, at most doubling or +4
            assert state.replicas <= max(policy.desired(lag), 1)
            assert state.replicas <= max(2 * before, before + 4)
        if 0 < state.replicas < before:  # down: one step, never below a recent recommendation
            assert before - state.replicas <= policy.scale_down_step
            recent = [d for t, d, _ in history if t > now - policy.scale_down_window or t == now]
            assert state.replicas >= max(recent)
        if state.replicas == 0 and before > 0:  # to zero: only after the cool-down without lag
            quiet = [
                lag for (t, _, _), lag in zip(history, lags, strict=False) if t > now - policy.cooldown_period
            ]
            assert all(q <= policy.activation_lag_threshold for q in quiet)
    downs = [t for (t, _, r), (_, _, prev) in zip(history[1:], history, strict=False) if 0 < r < prev]
    assert all(b - a >= policy.scale_down_period for a, b in itertools.pairwise(downs))


def test_a_backlog_raises_the_instances_which_fall_back_one_by_one_after_the_cool_down() -> None:
    policy = with_cooldown(with_bounds(POLICIES["processor"], low=1, high=4), 300)
    state = ScaleState(replicas=1)
    seen = []
    # 1.5 M waiting, draining by 300 k a poll, then quiet for ten minutes: polls every 15 s.
    lags = [max(0, 1_500_000 - 300_000 * poll) for poll in range(8)] + [0] * 40
    for poll, lag in enumerate(lags):
        state = decide(policy, state, lag=lag, now=poll * 15.0)
        seen.append(state.replicas)
    assert seen[0] == 4  # ceil(1.5 M / 200 k) = 8, within 1..4
    drained = lags.index(0)
    assert seen[:drained] == [4] * drained  # never down while the lag still wants more
    # Still 4 for the 5-minute window after the last high recommendation, then one a minute.
    last_high = max(poll for poll, lag in enumerate(lags) if policy.desired(lag) == 4)
    first_down = seen.index(3)
    assert first_down * 15.0 - last_high * 15.0 >= 300
    assert [seen[first_down + 4 * step] for step in range(3)] == [3, 2, 1]
    assert seen[-1] == 1 and min(seen) == 1


def test_the_sink_wakes_from_zero_on_any_lag_and_goes_back_after_its_cooldown() -> None:
    policy = with_cooldown(POLICIES["sink"], 300)
    state = decide(policy, ScaleState(replicas=0), lag=0, now=0)
    assert state.replicas == 0
    state = decide(policy, state, lag=1, now=15)
    assert state.replicas == 1
    assert decide(policy, state, lag=0, now=15 + 299).replicas == 1
    assert decide(policy, state, lag=0, now=15 + 300).replicas == 0


def test_a_backlog_at_zero_wakes_more_than_one_at_once() -> None:
    policy = with_bounds(POLICIES["sink"], low=0, high=12)
    assert decide(policy, ScaleState(replicas=0), lag=10**9, now=0).replicas == 4


# -- the flags ------------------------------------------------------------------------------


def test_good_ranges_parse() -> None:
    assert parse_autoscale(["processor=1..4", "sink=0..3", "store=1..6", "notifier=2..2"]) == {
        "processor": (1, 4),
        "sink": (0, 3),
        "store": (1, 6),
        "notifier": (2, 2),
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("processor=4..1", "the minimum 4 is above the maximum 1"),
        ("processor=0..4", "a processor never scales below 1"),
        ("processor=1..99999", "the maximum must be 1 to 12"),
        ("store=1..7", "the maximum must be 1 to 6"),
        ("sink=0..0", "the maximum must be 1 to 12"),
        ("bridge=1..3", "the bridge scales on CPU"),
        ("cruncher=1..3", "COMPONENT one of processor, sink, store, notifier"),
        ("processor", "COMPONENT=MIN..MAX"),
        ("processor=3", "takes MIN..MAX"),
        ("processor=1..x", "takes MIN..MAX"),
    ],
)
def test_bad_ranges_are_named(value: str, message: str) -> None:
    with pytest.raises(AutoscaleError, match=message.replace(".", r"\.")):
        parse_autoscale([value])


def test_a_component_autoscaled_twice_is_refused() -> None:
    with pytest.raises(AutoscaleError, match="given twice"):
        parse_autoscale(["sink=1..2", "sink=1..3"])


def plan(**given: Any) -> Any:
    options: dict[str, Any] = {
        "autoscale": [],
        "lag_overrides": [],
        "scale": {},
        "only": [],
        "poll": None,
        "cooldown": None,
    }
    return autoscale_plan(**{**options, **given})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"autoscale": ["sink=1..3"], "scale": {"sink": 2}}, "sink: --scale fixes the instance count"),
        ({"autoscale": ["sink=1..3"], "only": ["processor"]}, "--autoscale sink, but --only leaves it out"),
        (
            {"autoscale": ["sink=1..3"], "lag_overrides": ["store=10"]},
            "--autoscale-lag store: not autoscaled",
        ),
        ({"autoscale": ["sink=1..3"], "lag_overrides": ["sink=0"]}, "--autoscale-lag takes COMPONENT=N"),
    ],
)
def test_contradicting_flags_are_refused(given: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan(**given)


def test_overrides_reach_the_policy_and_the_lag_source_is_the_components_group() -> None:
    scaled = plan(autoscale=["sink=1..3"], lag_overrides=["sink=500"], poll=0.5, cooldown=4)
    sink = scaled["sink"]
    assert (sink.group, sink.topic) == ("thermoflow-sink", "telemetry.readings")
    policy = sink.policy
    assert (policy.min_replicas, policy.max_replicas, policy.lag_threshold) == (1, 3, 500)
    assert (policy.polling_interval, policy.scale_down_window, policy.cooldown_period) == (0.5, 4, 4)
    assert math.isclose(policy.scale_down_period, 0.8)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--autoscale", "processor=4..1"], "the minimum 4 is above the maximum 1"),
        (["--autoscale", "processor=0..99999"], "processor"),
        (["--autoscale", "grinder=1..2"], "--autoscale takes COMPONENT=MIN..MAX"),
        (["--autoscale", "sink=1..2", "--scale", "sink=2"], "--scale fixes the instance count"),
    ],
)
def test_run_refuses_bad_autoscale_flags_before_starting_anything(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "thermoflow", "run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "started" not in result.stdout + result.stderr
