"""One reconciliation, decided without I/O: from the ClusterApp and what the cluster shows,
the children it should have and the status it should report.

The kopf handlers feed this from their indices and write only the difference; the tests and
the benchmark call it directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from clusterous_operator.builders import APP_LABEL, COMPONENT_LABEL, SPEC_HASH_ANNOTATION, build_children
from clusterous_operator.images import CLUSTER_REGISTRY
from clusterous_operator.placement import Reserved, check_fits, node_groups, place
from clusterous_operator.spec import App, SpecError, check_groups, cpu_millicores, memory_bytes, parse_app
from clusterous_operator.status import (
    FAILING_REASONS,
    Observed,
    PodState,
    build_status,
    component_status,
    waiting_components,
)


@dataclass(frozen=True)
class Decision:
    """What the app should look like now: its children (none when the spec is invalid) and status."""

    children: list[dict]
    status: dict
    app: App | None = None
    error: SpecError | None = None
    waiting: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def decide(
    body: Mapping,
    nodes: Iterable[Mapping],
    pods: Iterable[Mapping] = (),
    deployments: Iterable[Mapping] = (),
    *,
    now: str,
    registry: str = CLUSTER_REGISTRY,
    elastic: frozenset[str] = frozenset(),
) -> Decision:
    """Children and status of the ClusterApp `body` given the cluster's Nodes, all Pods and the
    app's existing Deployments; `elastic` names the node groups the autoscaler may grow, which
    exist even with no node (scale to zero)."""
    nodes, pods = list(nodes), list(pods)
    previous = body.get("status") or {}
    generation = (body.get("metadata") or {}).get("generation")
    try:
        app = parse_app(body)
        reserved = check_against_cluster(app, nodes, pods, elastic)
    except SpecError as error:
        status = build_status(None, generation=generation, now=now, error=error, previous=previous)
        return Decision(children=[], status=status, error=error)
    placements = place(app.spec, nodes, reserved, elastic)
    observed = observed_deployments(app, deployments)
    waiting = waiting_components(app.spec, placements, observed)
    children = build_children(
        app, nodes, reserved=reserved, waiting=waiting, registry=registry, elastic=elastic
    )
    observed = _mark_outdated(observed, children, deployments)
    app_pods = [pod_state(p) for p in pods if _belongs(p, app)]
    counts = {
        c.name: (observed.get(c.name, Observed()).ready, placements[c.name].replicas)
        for c in app.spec.components
    }
    components = [
        component_status(
            c,
            placements[c.name],
            observed.get(c.name),
            app_pods,
            waiting_for=waiting.get(c.name, ()),
            waiting_ready=counts,
        )
        for c in app.spec.components
    ]
    status = build_status(app.spec, generation=generation, now=now, components=components, previous=previous)
    return Decision(children=children, status=status, app=app, waiting=waiting)


def check_against_cluster(
    app: App, nodes: Sequence[Mapping], pods: Iterable[Mapping], elastic: Iterable[str] = ()
) -> dict[str, Reserved]:
    """What the cluster must offer the spec (its groups exist, explicit cpu and memory fit a
    node); raises SpecError. Returns what other pods reserve on each node, for `place`.
    The operator, `run` (before applying) and `render --pods` call this one function; a group
    the autoscaler may grow (`elastic`) exists even at zero nodes."""
    check_groups(app.spec, node_groups(nodes) | set(elastic))
    reserved = reserved_resources(pods, app)
    check_fits(app.spec, nodes, reserved)
    return reserved


def status_changed(old: Mapping | None, new: Mapping) -> bool:
    """Whether writing `new` would change anything a reader sees (kopf's own keys aside)."""
    old = {k: v for k, v in (old or {}).items() if k in new}
    return old != dict(new)


def observed_deployments(app: App, deployments: Iterable[Mapping]) -> dict[str, Observed]:
    """The app's Deployments as Observed, by component."""
    observed = {}
    for deployment in deployments:
        labels = (deployment.get("metadata") or {}).get("labels") or {}
        if labels.get(APP_LABEL) != app.name or COMPONENT_LABEL not in labels:
            continue
        status = deployment.get("status") or {}
        observed[labels[COMPONENT_LABEL]] = Observed(
            replicas=(deployment.get("spec") or {}).get("replicas", 1),
            ready=status.get("readyReplicas") or 0,
        )
    return observed


def reserved_resources(pods: Iterable[Mapping], app: App) -> dict[str, Reserved]:
    """CPU (millicores) and memory (bytes) per node requested by running or scheduled pods of
    everything else, and the part of it of pods that belong to no application."""
    reserved: dict[str, Reserved] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node or phase in ("Succeeded", "Failed") or _belongs(pod, app):
            continue
        cpu, memory = pod_request(pod, "cpu", cpu_millicores), pod_request(pod, "memory", memory_bytes)
        system = APP_LABEL not in ((pod.get("metadata") or {}).get("labels") or {})
        before = reserved.get(node, Reserved())
        reserved[node] = Reserved(
            before.cpu_m + cpu,
            before.memory + memory,
            before.system_cpu_m + (cpu if system else 0),
            before.system_memory + (memory if system else 0),
        )
    return reserved


def pod_request(pod: Mapping, resource: str, parse) -> int:
    """The sum of a pod's containers' requests of `resource`, as `parse` counts it."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        request = ((container.get("resources") or {}).get("requests") or {}).get(resource)
        if request is not None:
            try:
                total += parse(request)
            except ValueError:
                continue
    return total


def pod_state(pod: Mapping) -> PodState:
    """What the status needs from a pod: its phase, unschedulable or not, why it fails."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    status = pod.get("status") or {}
    unschedulable = any(
        c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        for c in status.get("conditions") or []
    )
    failing = None
    for container in status.get("containerStatuses") or []:
        reason = ((container.get("state") or {}).get("waiting") or {}).get("reason")
        if reason in FAILING_REASONS:
            failing = reason
    return PodState(
        component=labels.get(COMPONENT_LABEL, ""),
        phase=status.get("phase", "Pending"),
        unschedulable=unschedulable,
        failing_reason=failing,
    )


def _belongs(obj: Mapping, app: App) -> bool:
    meta = obj.get("metadata") or {}
    return (meta.get("labels") or {}).get(APP_LABEL) == app.name and meta.get(
        "namespace", app.namespace
    ) == app.namespace


def _mark_outdated(
    observed: dict[str, Observed], children: list[dict], deployments: Iterable[Mapping]
) -> dict[str, Observed]:
    """A Deployment about to be replaced, or not yet rolled out, has no ready replicas of the
    new spec: count it as not ready, so the app is never Running on an old spec."""
    wanted = {
        o["metadata"]["labels"].get(COMPONENT_LABEL): o["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        for o in children
        if o["kind"] == "Deployment"
    }
    result = dict(observed)
    for deployment in deployments:
        meta = deployment.get("metadata") or {}
        component = (meta.get("labels") or {}).get(COMPONENT_LABEL)
        if component not in result:
            continue
        current = (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION) == wanted.get(component)
        rolled = (deployment.get("status") or {}).get("observedGeneration", 0) >= (
            meta.get("generation") or 0
        )
        if not (current and rolled):
            result[component] = Observed(replicas=result[component].replicas, ready=0)
    return result
