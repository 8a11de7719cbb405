"""deploy/kubernetes, tested without a cluster: the base and the example overlay are rendered
(tests/support/kustomize.py), every object is validated against Kubernetes' JSON schemas
(kubernetes-validate) or, for KEDA's, against tests/support/keda.py, and everything the pods
rely on is checked against the code: commands, settings, ports, probes, ConfigMap keys,
consumer groups, topics and partition counts."""

from __future__ import annotations

import base64
import contextlib
import os
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from pydantic_settings import BaseSettings

from tests.support import keda, kustomize
from thermoflow.alerts.routing import parse_routes
from thermoflow.alerts.settings import AlertsSettings
from thermoflow.cli import app, register_components
from thermoflow.ingest.settings import IngestSettings
from thermoflow.processors.settings import ProcessorSettings
from thermoflow.rules import load_rules
from thermoflow.settings import ThermoflowSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "example"
RENDERINGS = {"base": BASE, "overlay": OVERLAY}

#: The oldest Kubernetes the manifests claim (policy/v1, autoscaling/v2, restricted pod security).
KUBERNETES_VERSION = "1.29"
HTTP_PORT = 9108

#: The settings class each command reads.
SETTINGS_OF: dict[tuple[str, ...], type[ThermoflowSettings]] = {
    ("bridge",): IngestSettings,
    ("sink",): IngestSettings,
    ("process",): ProcessorSettings,
    ("alerts", "store"): AlertsSettings,
    ("alerts", "notify"): AlertsSettings,
    ("init",): ThermoflowSettings,
}

#: Every long-running component: its Deployment, and how Kafka sees it (None: not a consumer).
COMPONENTS: dict[str, tuple[str, ...]] = {
    "thermoflow-bridge": ("bridge",),
    "thermoflow-processor": ("process",),
    "thermoflow-sink": ("sink",),
    "thermoflow-alerts-store": ("alerts", "store"),
    "thermoflow-alerts-notify": ("alerts", "notify"),
}

#: Secrets the user creates outside kustomize (the overlay's comment says how).
CREATED_BY_THE_USER = {"thermoflow-kafka-ca"}


def render(which: str) -> list[kustomize.Manifest]:
    return kustomize.build(RENDERINGS[which])


def workloads(objects: list[kustomize.Manifest]) -> list[kustomize.Manifest]:
    return [obj for obj in objects if kustomize.pod_spec(obj) is not None]


def the_container(obj: kustomize.Manifest) -> dict[str, Any]:
    spec = kustomize.pod_spec(obj)
    assert spec is not None
    (container,) = spec["containers"]  # one process per pod
    return dict(container)


def command_of(obj: kustomize.Manifest) -> tuple[str, ...]:
    args = the_container(obj)["args"]
    for command in SETTINGS_OF:
        if tuple(args[: len(command)]) == command:
            return command
    raise AssertionError(f"{obj['metadata']['name']}: args {args} start no known command")


def environment(objects: list[kustomize.Manifest], obj: kustomize.Manifest) -> dict[str, str]:
    """The variables the container gets: envFrom's ConfigMaps and Secrets, then env (which wins).

    A downward-API value becomes a pod name like the ones the cluster makes. A ConfigMap or
    Secret that is not rendered adds nothing (:func:`test_every_reference_in_the_overlay_resolves`).
    """
    container = the_container(obj)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = (
            ("ConfigMap", source["configMapRef"])
            if "configMapRef" in source
            else ("Secret", source["secretRef"])
        )
        with contextlib.suppress(KeyError):  # the base has no Secrets: the overlay's test checks them
            env.update(kustomize.data_of(kustomize.find(objects, kind, ref["name"])))
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", variable
            env[variable["name"]] = f"{obj['metadata']['name']}-7c9d8f6b5-x2x4q"
    return env


def with_mounted_files(
    objects: list[kustomize.Manifest], obj: kustomize.Manifest, env: dict[str, str], directory: Path
) -> dict[str, str]:
    """``env`` with each path into a mounted ConfigMap moved to a copy under ``directory``.

    Settings that check a file exists (THERMOFLOW_NOTIFY_ROUTES) then load as in the pod.
    """
    spec = kustomize.pod_spec(obj)
    assert spec is not None
    config_mounts = {
        mount["mountPath"]
        for mount in the_container(obj).get("volumeMounts", [])
        for volume in spec.get("volumes", [])
        if volume["name"] == mount["name"] and "configMap" in volume
    }
    moved = dict(env)
    for name, value in env.items():
        if str(PurePosixPath(value).parent) in config_mounts:
            copy = directory / name / PurePosixPath(value).name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(mounted_file(objects, obj, value))
            moved[name] = str(copy)
    return moved


def variables_of(cls: type[BaseSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    return {f"{prefix}{name.upper()}" for name in cls.model_fields}


# -- the schemas -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", sorted(RENDERINGS))
def test_every_object_validates_against_its_schema(which: str) -> None:
    checked = []
    for obj in render(which):
        name = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] in keda.SCHEMAS:
            try:
                jsonschema.validate(obj, keda.SCHEMAS[obj["kind"]])
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{which}: {name}: {exc.message} at {list(exc.absolute_path)}")
        else:
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{which}: {name}: {exc.message} at {list(exc.path)}")
        checked.append(obj["kind"])
    assert {"Deployment", "Job", "ScaledObject", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(
        checked
    )


@pytest.mark.parametrize("which", sorted(RENDERINGS))
def test_scaledobject_behaviors_are_valid_hpa_behaviors(which: str) -> None:
    """KEDA hands ``advanced.horizontalPodAutoscalerConfig.behavior`` to an HPA: check it as one."""
    for scaled in (obj for obj in render(which) if obj["kind"] == "ScaledObject"):
        behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": scaled["metadata"]["name"]},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                "maxReplicas": scaled["spec"]["maxReplicaCount"],
                "behavior": behavior,
            },
        }
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def test_the_schemas_catch_a_misspelt_field() -> None:
    """The validation is strict: a typo is an error, not a field silently ignored."""
    objects = render("overlay")
    deployment = kustomize.find(objects, "Deployment", "thermoflow-processor")
    spec = kustomize.pod_spec(deployment)
    assert spec is not None
    container = spec["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    scaled = kustomize.find(objects, "ScaledObject", "thermoflow-sink")
    scaled["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "1"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, keda.SCALED_OBJECT)
    scaled = kustomize.find(render("base"), "ScaledObject", "thermoflow-sink")
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 200000  # KEDA takes strings only
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, keda.SCALED_OBJECT)


def test_the_overlay_patches_what_it_means_to() -> None:
    """The renderer applied the overlay: the image, the namespace and each patch are there."""
    objects = render("overlay")
    for obj in workloads(objects):
        assert the_container(obj)["image"] == "registry.example.com/thermoflow:0.1.0"
        mounts = {mount["name"] for mount in the_container(obj)["volumeMounts"]}
        assert "kafka-ca" in mounts, obj["metadata"]["name"]
    assert all(
        obj["metadata"].get("namespace") == "thermoflow" for obj in objects if obj["kind"] != "Namespace"
    )
    with pytest.raises(kustomize.KustomizeError, match="matches nothing"):
        kustomize._patch(objects, {"patch": "[]", "target": {"kind": "Deployment", "name": "nope"}}, OVERLAY)


# -- commands, settings, ports ---------------------------------------------------------------


@pytest.mark.parametrize("which", sorted(RENDERINGS))
def test_every_container_runs_a_real_thermoflow_command(which: str) -> None:
    register_components()
    root: Any = typer.main.get_command(app)
    for obj in workloads(render(which)):
        name = obj["metadata"]["name"]
        assert "command" not in the_container(obj), f"{name}: keep the image's entrypoint, `thermoflow`"
        command, rest, path = root, [str(arg) for arg in the_container(obj)["args"]], ["thermoflow"]
        while hasattr(command, "get_command"):  # a group
            assert rest, f"{name}: `{' '.join(path)}` is a group, not a command"
            sub = command.get_command(command.context_class(command), rest[0])
            assert sub is not None, f"{name}: `{' '.join(path)}` has no command {rest[0]!r}"
            command, path, rest = sub, [*path, rest[0]], rest[1:]
        ctx = command.make_context(" ".join(path), rest)  # an unknown option or bad value raises
        assert not ctx.args, f"{name}: unexpected arguments {ctx.args}"


@pytest.mark.parametrize("which", sorted(RENDERINGS))
def test_every_variable_is_a_setting_of_its_component(which: str) -> None:
    """pydantic-settings ignores an unknown THERMOFLOW_* variable: a typo would change nothing."""
    objects = render(which)
    for obj in workloads(objects):
        known = variables_of(SETTINGS_OF[command_of(obj)])
        allowed = known | secret_names_routes_may_read(objects, obj)
        unknown = sorted(set(environment(objects, obj)) - allowed)
        assert not unknown, (
            f"{which}: {obj['metadata']['name']} sets variables its settings do not read: {unknown}"
        )


def secret_names_routes_may_read(objects: list[kustomize.Manifest], obj: kustomize.Manifest) -> set[str]:
    """The ``*_env`` variables a routes file mounted into this pod names."""
    path = environment(objects, obj).get("THERMOFLOW_NOTIFY_ROUTES")
    if path is None:
        return set()
    routes = parse_routes(mounted_file(objects, obj, path), source=path)
    return {
        value
        for route in routes.channels.values()
        for field, value in route.model_dump().items()
        if field.endswith("_env") and value
    }


def mounted_file(objects: list[kustomize.Manifest], obj: kustomize.Manifest, path: str) -> str:
    """The text the pod sees at ``path``, from the ConfigMap volume mounted over its directory.

    Mounted whole (no ``subPath``): only a directory mount gets a ConfigMap's updates.
    """
    spec = kustomize.pod_spec(obj)
    assert spec is not None
    file = PurePosixPath(path)
    for mount in the_container(obj).get("volumeMounts", []):
        if PurePosixPath(mount["mountPath"]) == file.parent:
            assert "subPath" not in mount, f"{path}: a subPath mount is never updated"
            (volume,) = [vol for vol in spec["volumes"] if vol["name"] == mount["name"]]
            config_map = kustomize.find(objects, "ConfigMap", volume["configMap"]["name"])
            data = kustomize.data_of(config_map)
            assert file.name in data, (
                f"{path}: ConfigMap {config_map['metadata']['name']} has keys {sorted(data)}"
            )
            return data[file.name]
    raise AssertionError(f"{obj['metadata']['name']}: nothing is mounted at {file.parent}")


@pytest.mark.parametrize("which", sorted(RENDERINGS))
def test_each_component_accepts_its_settings(
    which: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The pods' variables, values and all, load in the component's settings class."""
    objects = render(which)
    for name in [name for name in os.environ if name.startswith("THERMOFLOW_")]:
        monkeypatch.delenv(name)
    for obj in workloads(objects):
        env = with_mounted_files(objects, obj, environment(objects, obj), tmp_path)
        with monkeypatch.context() as scoped:
            for name, value in env.items():
                scoped.setenv(name, value)
            settings = load_settings(SETTINGS_OF[command_of(obj)])
        assert settings.kafka_bootstrap == env["THERMOFLOW_KAFKA_BOOTSTRAP"]
        # The grace the pod gets covers the component's own shutdown grace.
        spec = kustomize.pod_spec(obj)
        assert spec is not None
        if obj["kind"] == "Deployment":
            assert spec["terminationGracePeriodSeconds"] > settings.shutdown_grace


@pytest.mark.parametrize("which", sorted(RENDERINGS))
def test_probes_ports_and_scraping_use_the_components_http_port(which: str) -> None:
    for obj in (obj for obj in render(which) if obj["kind"] == "Deployment"):
        name = obj["metadata"]["name"]
        container = the_container(obj)
        assert {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"} in container["ports"], name
        for probe, path in (
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}, f"{name}: {probe}"
        annotations = obj["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(HTTP_PORT),
            "prometheus.io/path": "/metrics",
        }, name
    assert {obj["metadata"]["name"] for obj in render(which) if obj["kind"] == "Deployment"} == set(
        COMPONENTS
    )


def test_the_http_port_is_the_components_default() -> None:
    """The pods set no THERMOFLOW_HTTP_PORT: they rely on the setting's default being 9108."""
    field = ThermoflowSettings.model_fields.get("http_port")
    if field is None:
        pytest.skip("no http_port setting in this tree yet (the health/metrics endpoints add it)")
    assert field.get_default() == HTTP_PORT


# -- rules, routes, references -----------------------------------------------------------------


@pytest.mark.parametrize("which", sorted(RENDERINGS))
def test_the_processors_read_the_rules_configmap(which: str, tmp_path: Path) -> None:
    objects = render(which)
    processor = kustomize.find(objects, "Deployment", "thermoflow-processor")
    env = environment(objects, processor)
    text = mounted_file(objects, processor, env["THERMOFLOW_RULES_FILE"])
    (tmp_path / "rules.yaml").write_text(text)
    assert load_rules(tmp_path / "rules.yaml").rules, "the rules ConfigMap holds no rule"
    # One worker per pod: `--workers N` gives its children the path with symlinks resolved,
    # which would pin them to one revision of the ConfigMap (no reload).
    assert env["THERMOFLOW_WORKERS"] == "1"


def test_the_shipped_rules_are_the_bases_example() -> None:
    shipped = (ROOT / "processors" / "rules.yaml").read_text()
    assert (BASE / "rules.yaml").read_text() == shipped, "cp processors/rules.yaml deploy/kubernetes/base/"


def test_the_overlays_routes_parse_and_their_secrets_are_in_the_notify_secret() -> None:
    objects = render("overlay")
    notifier = kustomize.find(objects, "Deployment", "thermoflow-alerts-notify")
    named = secret_names_routes_may_read(objects, notifier)
    assert named, "the example routes name no secret variable"
    secret = kustomize.data_of(kustomize.find(objects, "Secret", "thermoflow-notify"))
    assert named <= set(secret), f"routes name variables the Secret lacks: {sorted(named - set(secret))}"


def test_every_reference_in_the_overlay_resolves() -> None:
    """What a pod, a ScaledObject or a TriggerAuthentication names exists in the rendering."""
    objects = render("overlay")
    present = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    wanted: set[tuple[str, str]] = set()
    for obj in workloads(objects):
        spec = kustomize.pod_spec(obj)
        assert spec is not None
        for source in the_container(obj).get("envFrom", []):
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if key in source and not source[key].get("optional"):
                    wanted.add((kind, source[key]["name"]))
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                wanted.add(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                wanted.add(("Secret", volume["secret"]["secretName"]))
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            wanted.add(("Deployment", obj["spec"]["scaleTargetRef"]["name"]))
            for trigger in obj["spec"]["triggers"]:
                wanted.add(("TriggerAuthentication", trigger["authenticationRef"]["name"]))
        if obj["kind"] == "TriggerAuthentication":
            wanted |= {("Secret", ref["name"]) for ref in obj["spec"]["secretTargetRef"]}
        if obj["kind"] == "HorizontalPodAutoscaler":
            wanted.add(("Deployment", obj["spec"]["scaleTargetRef"]["name"]))
    missing = {ref for ref in wanted - present if not (ref[0] == "Secret" and ref[1] in CREATED_BY_THE_USER)}
    assert not missing, f"named but not rendered: {sorted(missing)}"


def test_kedas_kafka_credentials_match_the_pods() -> None:
    """KEDA reads the lag with the same mechanism and user the pods use."""
    objects = render("overlay")
    config = kustomize.data_of(kustomize.find(objects, "ConfigMap", "thermoflow-config"))
    pods = kustomize.data_of(kustomize.find(objects, "Secret", "thermoflow-credentials"))
    keda_secret = kustomize.data_of(kustomize.find(objects, "Secret", "thermoflow-keda-kafka"))
    keda_names = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert keda_secret["sasl"] == keda_names[config["THERMOFLOW_KAFKA_SASL_MECHANISM"]]
    assert keda_secret["username"] == pods["THERMOFLOW_KAFKA_SASL_USERNAME"]
    assert (keda_secret["tls"] == "enable") == config["THERMOFLOW_KAFKA_SECURITY_PROTOCOL"].endswith("SSL")
    assert (
        base64.b64decode(kustomize.find(objects, "Secret", "thermoflow-keda-kafka")["data"]["tls"])
        == b"enable"
    )


# -- scaling ----------------------------------------------------------------------------------


def partitions(objects: list[kustomize.Manifest]) -> dict[str, int]:
    """The partition counts `thermoflow init` creates, from the Job's args."""
    args = the_container(kustomize.find(objects, "Job", "thermoflow-init"))["args"]
    given = dict(zip(args[1::2], args[2::2], strict=True))
    return {
        ThermoflowSettings().readings_topic: int(given["--readings-partitions"]),
        ThermoflowSettings().alerts_topic: int(given["--alerts-partitions"]),
    }


#: Where scaling to zero is safe (the ScaledObjects' comments say why; nowhere else it is).
SCALES_TO_ZERO = {"thermoflow-sink"}


@pytest.mark.parametrize("which", sorted(RENDERINGS))
def test_each_consumer_scales_on_the_lag_of_its_own_group_and_topic(
    which: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objects = render(which)
    config = kustomize.data_of(kustomize.find(objects, "ConfigMap", "thermoflow-config"))
    counts = partitions(objects)
    scaled = {obj["spec"]["scaleTargetRef"]["name"]: obj for obj in objects if obj["kind"] == "ScaledObject"}
    assert set(scaled) == set(COMPONENTS) - {"thermoflow-bridge"}
    for name, obj in scaled.items():
        for variable in [name for name in os.environ if name.startswith("THERMOFLOW_")]:
            monkeypatch.delenv(variable)
        deployment = kustomize.find(objects, "Deployment", name)
        with monkeypatch.context() as scoped:
            env = with_mounted_files(objects, deployment, environment(objects, deployment), tmp_path)
            for variable, value in env.items():
                scoped.setenv(variable, value)
            settings: Any = load_settings(SETTINGS_OF[command_of(deployment)])
        group_setting, topic = {
            "thermoflow-processor": ("processor_group", settings.readings_topic),
            "thermoflow-sink": ("sink_group", settings.readings_topic),
            "thermoflow-alerts-store": ("store_group", settings.alerts_topic),
            "thermoflow-alerts-notify": ("notify_group", settings.alerts_topic),
        }[name]
        group = getattr(settings, group_setting)
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        metadata = trigger["metadata"]
        assert (metadata["consumerGroup"], metadata["topic"]) == (group, topic), name
        assert metadata["bootstrapServers"] == config["THERMOFLOW_KAFKA_BOOTSTRAP"], (
            f"{name}: KEDA's Kafka differs"
        )
        assert metadata["offsetResetPolicy"] == "earliest", (
            f"{name}: the consumers start from the earliest offset"
        )
        spec = obj["spec"]
        assert 1 < spec["maxReplicaCount"] <= counts[topic], f"{name}: more pods than partitions sit idle"
        assert spec["minReplicaCount"] == (0 if name in SCALES_TO_ZERO else 1), name
        assert "replicas" not in deployment["spec"], f"{name}: KEDA owns the replica count"


def test_the_bridge_scales_on_cpu_over_a_shared_subscription() -> None:
    objects = render("overlay")
    hpa = kustomize.find(objects, "HorizontalPodAutoscaler", "thermoflow-bridge")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= 2
    bridge = kustomize.find(objects, "Deployment", "thermoflow-bridge")
    env = environment(objects, bridge)
    assert env["THERMOFLOW_MQTT_SHARE_GROUP"], "bridges without a share group would each get every message"
    client_id = next(
        var for var in the_container(bridge)["env"] if var["name"] == "THERMOFLOW_MQTT_CLIENT_ID"
    )
    assert client_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "one client id per pod"
    assert "replicas" not in bridge["spec"], "the HPA owns the replica count"


def test_every_kafka_consumer_has_a_stable_member_id_per_pod() -> None:
    objects = render("overlay")
    for name in set(COMPONENTS) - {"thermoflow-bridge"}:
        env = the_container(kustomize.find(objects, "Deployment", name))["env"]
        (instance,) = [var for var in env if var["name"] == "THERMOFLOW_INSTANCE_ID"]
        assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", name


# -- safety -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", sorted(RENDERINGS))
def test_pods_run_restricted(which: str) -> None:
    """Non-root, no privilege escalation, no capabilities, read-only root, RuntimeDefault seccomp."""
    for obj in workloads(render(which)):
        name = obj["metadata"]["name"]
        spec = kustomize.pod_spec(obj)
        assert spec is not None
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, f"{name}: the Dockerfile's user"
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        container = the_container(obj)
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }, name
        assert any(mount["mountPath"] == "/tmp" for mount in container["volumeMounts"]), (
            f"{name}: writable /tmp"
        )
        resources = container["resources"]
        assert set(resources) == {"requests", "limits"}, name
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, name


@pytest.mark.parametrize("which", sorted(RENDERINGS))
def test_every_component_has_a_disruption_budget(which: str) -> None:
    objects = render(which)
    budgets = [obj for obj in objects if obj["kind"] == "PodDisruptionBudget"]
    for obj in (obj for obj in objects if obj["kind"] == "Deployment"):
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, obj["metadata"]["name"]
        # maxUnavailable: a one-replica minAvailable would block every node drain.
        assert covering[0]["spec"] == {"maxUnavailable": 1, "selector": covering[0]["spec"]["selector"]}


def test_the_manifests_are_plain_yaml() -> None:
    """No anchors or aliases (not every kustomize version expands them), one object per document."""
    for path in KUBERNETES.rglob("*.yaml"):
        events = list(yaml.parse(path.read_text()))
        assert not any(getattr(event, "anchor", None) for event in events), f"{path}: YAML anchor or alias"
