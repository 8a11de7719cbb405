"""A small, strict subset of ``kustomize build``, so the manifest tests need no kubectl.

It understands what ``deploy/kubernetes`` uses and refuses anything else (a field it does not
know raises :class:`KustomizeError` instead of being skipped, so the tests never check less
than a real build would produce):

- ``resources``: YAML files and directories holding a kustomization;
- ``configMapGenerator`` / ``secretGenerator`` with ``literals`` and ``files``, behaviors
  ``create``, ``merge`` and ``replace``; names are never hashed, so ``generatorOptions`` must
  say ``disableNameSuffixHash: true``;
- ``patches`` as JSON 6902 operation lists (``add``, ``replace``, ``remove``) with a ``target``
  of ``kind`` and optionally ``name``; a target that matches nothing is an error;
- ``images`` (``newName``, ``newTag``) and ``namespace``.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "images",
    "generatorOptions",
    "configMapGenerator",
    "secretGenerator",
    "patches",
}
_GENERATOR_FIELDS = {"name", "behavior", "literals", "files"}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class KustomizeError(ValueError):
    """The kustomization uses something this subset does not implement, or is wrong."""


def load_manifests(path: Path) -> list[Manifest]:
    """Every non-empty YAML document of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def build(directory: Path) -> list[Manifest]:
    """The objects ``kustomize build directory`` would print (in resource order)."""
    kustomization: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _FIELDS
    if unknown:
        raise KustomizeError(f"{directory}: fields this subset does not implement: {sorted(unknown)}")
    objects: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects += build(path) if path.is_dir() else load_manifests(path)
    generators = [
        *(("ConfigMap", gen) for gen in kustomization.get("configMapGenerator", [])),
        *(("Secret", gen) for gen in kustomization.get("secretGenerator", [])),
    ]
    if generators and not kustomization.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise KustomizeError(f"{directory}: name hashing is not implemented: disableNameSuffixHash: true")
    for kind, generator in generators:
        _generate(objects, kind, generator, directory)
    for patch in kustomization.get("patches", []):
        _patch(objects, patch, directory)
    for image in kustomization.get("images", []):
        _set_image(objects, image)
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in _CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    return objects


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    """The one object of ``kind`` called ``name``; KeyError if there is none."""
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"no {kind} {name}")


def data_of(obj: Manifest) -> dict[str, str]:
    """A ConfigMap's or Secret's data as text (a Secret's ``data`` is base64)."""
    if obj["kind"] == "Secret":
        decoded = {key: base64.b64decode(value).decode() for key, value in obj.get("data", {}).items()}
        return {**decoded, **obj.get("stringData", {})}
    return dict(obj.get("data", {}))


def _generate(objects: list[Manifest], kind: str, generator: dict[str, Any], directory: Path) -> None:
    unknown = set(generator) - _GENERATOR_FIELDS
    if unknown:
        raise KustomizeError(f"{generator.get('name')}: generator fields not implemented: {sorted(unknown)}")
    data: dict[str, str] = {}
    for literal in generator.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise KustomizeError(f"{generator['name']}: literal without '=': {literal!r}")
        data[key] = value
    for entry in generator.get("files", []):
        key, sep, file_name = entry.partition("=")
        path = directory / (file_name if sep else key)
        data[key if sep else path.name] = path.read_text(encoding="utf-8")
    behavior = generator.get("behavior", "create")
    existing = [
        obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == generator["name"]
    ]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{kind} {generator['name']} exists already: use behavior merge or replace")
        obj: Manifest = {"apiVersion": "v1", "kind": kind, "metadata": {"name": generator["name"]}}
        if kind == "Secret":
            obj["type"] = "Opaque"
        objects.append(obj)
    elif behavior in ("merge", "replace"):
        if not existing:
            raise KustomizeError(f"{kind} {generator['name']}: nothing to {behavior}")
        obj = existing[0]
        if behavior == "replace":
            obj.pop("data", None)
    else:
        raise KustomizeError(f"{generator['name']}: unknown behavior {behavior!r}")
    if kind == "Secret":
        encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        obj["data"] = {**obj.get("data", {}), **encoded}
    else:
        obj["data"] = {**obj.get("data", {}), **data}


def _patch(objects: list[Manifest], patch: dict[str, Any], directory: Path) -> None:
    if set(patch) - {"path", "patch", "target"} or "target" not in patch:
        raise KustomizeError(f"patch {patch}: only path/patch with a target is implemented")
    target = patch["target"]
    if set(target) - {"kind", "name"}:
        raise KustomizeError(f"patch target {target}: only kind and name are implemented")
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise KustomizeError(f"patch {patch}: only JSON 6902 operation lists are implemented")
    matched = [
        obj
        for obj in objects
        if obj["kind"] == target["kind"]
        and target.get("name", obj["metadata"]["name"]) == obj["metadata"]["name"]
    ]
    if not matched:
        raise KustomizeError(f"patch target {target} matches nothing")
    for obj in matched:
        for operation in operations:
            _apply(obj, operation)


def _apply(obj: Manifest, operation: dict[str, Any]) -> None:
    op, pointer = operation["op"], operation["path"]
    parts = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
    parent: Any = obj
    try:
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    except (KeyError, IndexError, ValueError):
        raise KustomizeError(
            f"{op} {pointer}: no such path in {obj['kind']} {obj['metadata']['name']}"
        ) from None
    last = parts[-1]
    value = copy.deepcopy(operation.get("value"))
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, value)
        elif op == "replace":
            parent[index] = value
        elif op == "remove":
            del parent[index]
        else:
            raise KustomizeError(f"op {op!r} not implemented")
        return
    if op in ("replace", "remove") and last not in parent:
        raise KustomizeError(f"{op} {pointer}: no such path in {obj['kind']} {obj['metadata']['name']}")
    if op in ("add", "replace"):
        parent[last] = value
    elif op == "remove":
        del parent[last]
    else:
        raise KustomizeError(f"op {op!r} not implemented")


def pod_spec(obj: Manifest) -> dict[str, Any] | None:
    """The pod template's spec of a workload (Deployment, Job, ...), else None."""
    template = obj.get("spec", {}).get("template")
    return template["spec"] if isinstance(template, dict) else None


def _set_image(objects: list[Manifest], image: dict[str, Any]) -> None:
    if set(image) - {"name", "newName", "newTag"}:
        raise KustomizeError(f"image {image}: only newName and newTag are implemented")
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                new_tag = image.get("newTag", tag)
                container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")
