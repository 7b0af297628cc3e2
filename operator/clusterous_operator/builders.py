"""Every object the operator creates for a ClusterApp, built from the app and the Nodes (no I/O).

The handlers and `clusterous-k8s render` call the same functions, so what `render` prints is
what the operator creates (the operator adds owner references, which need the live object).
Each object carries a hash of itself, so a resync compares hashes and writes only what changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from clusterous_core.names import GROUP_LABEL
from clusterous_operator.images import CLUSTER_REGISTRY, resolve_image
from clusterous_operator.placement import ComponentPlacement, Reserved, place
from clusterous_operator.spec import App, Component, format_cpu, format_memory

APP_LABEL = "clusterous.io/app"
COMPONENT_LABEL = "clusterous.io/component"
MANAGED_BY = {"app.kubernetes.io/managed-by": "clusterous-operator"}
SPEC_HASH_ANNOTATION = "clusterous.io/spec-hash"
SHARED_STORAGE_CLASS = "clusterous-shared"
SHARED_VOLUME = "shared"
HOSTNAME_LABEL = "kubernetes.io/hostname"


def build_children(
    app: App,
    nodes: Iterable[Mapping],
    *,
    reserved: Mapping[str, Reserved] | None = None,
    waiting: Iterable[str] = (),
    registry: str = CLUSTER_REGISTRY,
    elastic: Iterable[str] = (),
) -> list[dict]:
    """The shared-volume claim, then a Deployment and a Service per component (`elastic`: as `place`).

    `waiting` names components whose dependencies are not ready yet: their Deployment is
    created once they can start, at its full replicas (one write, not a create at 0 and an
    update), and their Service at once (its DNS name may be looked up early).
    """
    placements = place(app.spec, list(nodes), reserved, elastic)
    held = set(waiting)
    objects: list[dict] = [build_shared_claim(app)]
    for component in app.spec.components:
        if component.name not in held:
            objects.append(build_deployment(app, component, placements[component.name], registry=registry))
        objects.append(build_service(app, component))
    return [with_spec_hash(o) for o in objects]


def child_name(app: App, component: Component | str) -> str:
    return f"{app.name}-{component if isinstance(component, str) else component.name}"


def shared_claim_name(app: App) -> str:
    return f"{app.name}-shared"


def app_labels(app: App, component: Component | None = None) -> dict[str, str]:
    labels = {APP_LABEL: app.name}
    if component is not None:
        labels[COMPONENT_LABEL] = component.name
    return labels


def build_shared_claim(app: App) -> dict:
    """The claim on the shared volume; the class maps every claim to the volume's root."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(app, shared_claim_name(app), app_labels(app)),
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": SHARED_STORAGE_CLASS,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }


def build_deployment(
    app: App,
    component: Component,
    placement: ComponentPlacement,
    *,
    registry: str = CLUSTER_REGISTRY,
) -> dict:
    """One component's Deployment; Recreate, because packed nodes have no CPU for a surge pod."""
    labels = app_labels(app, component)
    pod_spec: dict = {
        "nodeSelector": {GROUP_LABEL: component.group},
        "enableServiceLinks": False,
        "containers": [build_container(app, component, placement, registry)],
        "volumes": [{"name": SHARED_VOLUME, "persistentVolumeClaim": {"claimName": shared_claim_name(app)}}],
    }
    if component.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if placement.one_per_node:
        # Its ports are the node's ports: a second replica there could never bind them.
        pod_spec["affinity"] = {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": dict(labels)}, "topologyKey": HOSTNAME_LABEL}
                ]
            }
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(app, child_name(app, component), labels),
        "spec": {
            "replicas": placement.replicas,
            "revisionHistoryLimit": 2,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": {**labels, GROUP_LABEL: component.group}}, "spec": pod_spec},
        },
    }


def build_container(
    app: App, component: Component, placement: ComponentPlacement, registry: str = CLUSTER_REGISTRY
) -> dict:
    container: dict = {
        "name": component.name,
        "image": resolve_image(component.image, registry),
        "env": build_env(app, component),
        "volumeMounts": [{"name": SHARED_VOLUME, "mountPath": app.spec.mount_path}],
    }
    if component.command is not None:
        container["command"] = list(component.command)
    if component.ports:
        container["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in component.ports]
    requests = {}
    if placement.cpu_m:
        requests["cpu"] = format_cpu(placement.cpu_m)
    if placement.memory:
        # No limit: a replica may use memory its node has spare; past its request it is the
        # first the kubelet evicts under memory pressure (see docs/clusterapp.md).
        requests["memory"] = format_memory(placement.memory)
    if requests:
        container["resources"] = {"requests": requests}
    return container


def build_env(app: App, component: Component) -> list[dict]:
    """Where everything is: this app and component, the shared directory, and for every
    component CLUSTEROUS_<NAME>_HOST (its Service) and, with ports, _PORT (the first) and _PORTS."""
    env = [
        {"name": "CLUSTEROUS_APP", "value": app.name},
        {"name": "CLUSTEROUS_COMPONENT", "value": component.name},
        {"name": "CLUSTEROUS_SHARED_DIR", "value": app.spec.mount_path},
    ]
    for other in app.spec.components:
        prefix = env_prefix(other)
        env.append({"name": f"{prefix}_HOST", "value": child_name(app, other)})
        if other.ports:
            env.append({"name": f"{prefix}_PORT", "value": str(other.ports[0])})
            env.append({"name": f"{prefix}_PORTS", "value": ",".join(str(p) for p in other.ports)})
    return env


def env_prefix(component: Component) -> str:
    return "CLUSTEROUS_" + component.name.upper().replace("-", "_")


def build_service(app: App, component: Component) -> dict:
    """The component's stable name. Without ports it is headless: DNS lists its pods."""
    labels = app_labels(app, component)
    spec: dict = {"selector": dict(labels)}
    if component.ports:
        spec["ports"] = [
            {"name": f"tcp-{p}", "port": p, "targetPort": p, "protocol": "TCP"} for p in component.ports
        ]
    else:
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(app, child_name(app, component), labels),
        "spec": spec,
    }


def spec_hash(obj: Mapping) -> str:
    """A short, stable digest of an object as built (without its own hash annotation)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def with_spec_hash(obj: dict) -> dict:
    obj["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = spec_hash(obj)
    return obj


@dataclass(frozen=True)
class Change:
    """One write the operator must make: create, replace or delete `obj`."""

    verb: str
    obj: Mapping


def plan_changes(desired: Iterable[Mapping], existing: Mapping[tuple[str, str], str | None]) -> list[Change]:
    """The writes that turn `existing` ((kind, name) -> its spec hash) into `desired`.

    Objects whose hash matches are left alone, so a resync with nothing changed writes nothing.
    """
    changes = []
    wanted = {(o["kind"], o["metadata"]["name"]): o for o in desired}
    for key, obj in wanted.items():
        if key not in existing:
            changes.append(Change("create", obj))
        elif existing[key] != obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION]:
            changes.append(Change("replace", obj))
    for kind, name in existing:
        if (kind, name) not in wanted:
            changes.append(Change("delete", {"kind": kind, "metadata": {"name": name}}))
    return changes


def _metadata(app: App, name: str, labels: Mapping[str, str]) -> dict:
    return {"name": name, "namespace": app.namespace, "labels": {**labels, **MANAGED_BY}}
