"""What a ClusterApp's status says, computed from what was observed (no I/O).

The phase is a small, visible machine (schema.Phase documents each one); conditions carry
reasons a person can act on (schema.Reason), including the command to run. The dicts built here
hold plain strings (`.value`), so they dump as YAML and JSON alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from clusterous_operator.images import in_cluster_registry, resolve_image
from clusterous_operator.placement import ComponentPlacement
from clusterous_operator.schema import ComponentState, ConditionType, Phase, Reason
from clusterous_operator.spec import (
    AUTO,
    Component,
    Spec,
    SpecError,
    dependency_order,
    format_cpu,
    format_memory,
)

FAILING_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@dataclass(frozen=True)
class Observed:
    """One component's Deployment as last seen: replicas asked for and replicas ready."""

    replicas: int = 0
    ready: int = 0


@dataclass(frozen=True)
class PodState:
    """The part of a pod the status needs."""

    component: str
    phase: str = "Running"
    unschedulable: bool = False
    failing_reason: str | None = None  # a container's waiting reason from FAILING_REASONS


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    group: str
    state: ComponentState
    desired: int
    ready: int
    cpu: str | None
    message: str
    blocked_reason: Reason | None = None  # INSUFFICIENT_CPU, NO_NODES, CONTAINERS_FAILING
    memory: str | None = None

    def as_dict(self) -> dict:
        data = {
            "name": self.name,
            "group": self.group,
            "state": self.state.value,
            "desired": self.desired,
            "ready": self.ready,
            "message": self.message,
        }
        if self.cpu is not None:
            data["cpu"] = self.cpu
        if self.memory is not None:
            data["memory"] = self.memory
        return data


def waiting_components(
    spec: Spec, placements: Mapping[str, ComponentPlacement], observed: Mapping[str, Observed]
) -> dict[str, tuple[str, ...]]:
    """Components that must not start yet -> the dependencies they wait for.

    A component that already runs (its Deployment asks for replicas) is never stopped again.
    """
    waiting: dict[str, tuple[str, ...]] = {}
    for name in dependency_order(spec):
        component = spec.component(name)
        if observed.get(name, Observed()).replicas > 0:
            continue
        blockers = tuple(
            d
            for d in component.depends_on
            if d in waiting or not is_ready(spec.component(d), placements[d], observed.get(d))
        )
        if blockers:
            waiting[name] = blockers
    return waiting


def is_ready(component: Component, placement: ComponentPlacement, observed: Observed | None) -> bool:
    """All of a component's replicas are ready; a component fixed at 0 replicas counts as ready."""
    if placement.replicas == 0:
        return component.replicas == 0
    return (
        observed is not None
        and observed.replicas >= placement.replicas
        and observed.ready >= placement.replicas
    )


def component_status(
    component: Component,
    placement: ComponentPlacement,
    observed: Observed | None,
    pods: Iterable[PodState],
    waiting_for: tuple[str, ...] = (),
    waiting_ready: Mapping[str, tuple[int, int]] | None = None,
) -> ComponentStatus:
    """One component's state and the sentence that explains it."""
    observed = observed or Observed()
    pods = [p for p in pods if p.component == component.name]
    desired, ready = placement.replicas, min(observed.ready, placement.replicas)
    cpu = format_cpu(placement.cpu_m) if placement.cpu_m else None
    memory = format_memory(placement.memory) if placement.memory else None

    def status(state: ComponentState, message: str, reason: Reason | None = None) -> ComponentStatus:
        return ComponentStatus(
            component.name, component.group, state, desired, ready, cpu, message, reason, memory
        )

    if waiting_for:
        counts = waiting_ready or {}
        detail = ", ".join(
            f"{d} ({counts.get(d, (0, 0))[0]}/{counts.get(d, (0, 0))[1]} ready)" for d in waiting_for
        )
        return status(ComponentState.WAITING, f"{component.name} waiting for {detail}")
    blocked = _placement_problem(component, placement, pods)
    failing = [p.failing_reason for p in pods if p.failing_reason]
    stuck = ComponentState.DEGRADED if ready else ComponentState.PENDING
    if blocked:
        return status(stuck, blocked[1], blocked[0])
    if failing:
        message = _failing_message(component, failing)
        return status(stuck, message, Reason.CONTAINERS_FAILING)
    pending = sum(1 for p in pods if p.phase == "Pending")
    if ready >= desired and observed.replicas == desired and not pending:
        return status(ComponentState.READY, f"{ready}/{desired} {component.name} replicas ready")
    return status(ComponentState.DEPLOYING, f"{ready}/{desired} {component.name} replicas ready")


def build_status(
    spec: Spec | None,
    *,
    generation: int | None,
    now: str,
    components: Iterable[ComponentStatus] = (),
    error: SpecError | None = None,
    previous: Mapping | None = None,
) -> dict:
    """The whole status object; lastTransitionTime moves only when a condition's status does."""
    previous = previous or {}
    components = list(components)
    if error is not None or spec is None:
        conditions = [
            _condition(ConditionType.SPEC_VALID, False, Reason.INVALID_SPEC, str(error)),
            _condition(ConditionType.READY, False, Reason.INVALID_SPEC, "fix the spec; nothing is deployed"),
        ]
        return _assemble(Phase.FAILED, generation, [], conditions, str(error), previous, now)
    desired = sum(c.desired for c in components)
    ready = sum(c.ready for c in components)
    phase = app_phase(components, previous, generation)
    blocked = [c for c in components if c.blocked_reason in (Reason.INSUFFICIENT_CPU, Reason.NO_NODES)]
    scheduled = (
        _condition(
            ConditionType.SCHEDULED,
            False,
            cast(Reason, blocked[0].blocked_reason),  # not None: filtered above
            "; ".join(c.message for c in blocked),
        )
        if blocked
        else _condition(
            ConditionType.SCHEDULED, True, Reason.PLACED, "every replica fits on the group's nodes"
        )
    )
    conditions = [
        _condition(ConditionType.SPEC_VALID, True, Reason.VALID, "the spec is valid"),
        scheduled,
        _ready_condition(components),
    ]
    message = next(
        (c["message"] for c in conditions if c["status"] != "True"), f"{ready}/{desired} replicas ready"
    )
    return _assemble(phase, generation, components, conditions, message, previous, now, (ready, desired))


def app_phase(components: list[ComponentStatus], previous: Mapping, generation: int | None) -> Phase:
    if all(c.state == ComponentState.READY for c in components):
        return Phase.RUNNING
    if any(c.state in (ComponentState.PENDING, ComponentState.DEGRADED) for c in components):
        return Phase.DEGRADED if any(c.ready for c in components) else Phase.PENDING
    was_up = previous.get("phase") in (Phase.RUNNING, Phase.DEGRADED)
    if was_up and previous.get("observedGeneration") == generation:
        return Phase.DEGRADED
    return Phase.DEPLOYING


def cores(millicores: int) -> str:
    """CPU as people write it in messages: 0.5, 2."""
    return f"{millicores / 1000:g}"


def scale_hint(component: Component, placement: ComponentPlacement, missing: int) -> str:
    """The command that makes room for `missing` more replicas of `component`: as many more
    nodes as it takes at the replicas a new node holds (placement's arithmetic)."""
    if placement.elastic:
        return f"the autoscaler grows {component.group} up to its max (`clusterous-k8s status` says why)"
    if placement.group_nodes == 0:
        return f"`clusterous-k8s scale {component.group} 1`"
    if placement.per_new_node == 0:
        return f"a larger {component.group} instance type, or a smaller cpu"
    extra = max(1, math.ceil(missing / placement.per_new_node))
    return f"`clusterous-k8s scale {component.group} {placement.group_nodes + extra}`"


def _placement_problem(
    component: Component, placement: ComponentPlacement, pods: list[PodState]
) -> tuple[Reason, str] | None:
    """(reason, message) when replicas cannot be scheduled, predicted or observed."""
    group, cpu = component.group, placement.cpu_m
    if placement.group_nodes == 0 and (placement.replicas > 0 or component.replicas == AUTO):
        hint = scale_hint(component, placement, 1)
        return Reason.NO_NODES, f"{component.name}: no Ready, schedulable {group} node — {hint}"
    spread = " (hostNetwork with ports: at most one replica per node)" if placement.one_per_node else ""
    if component.replicas == AUTO and placement.replicas == 0:
        hint = scale_hint(component, placement, 1)
        return (
            Reason.INSUFFICIENT_CPU,
            f"0 {component.name} replicas: no {group} node has {cores(cpu or 0)} CPU free — {hint}",
        )
    unschedulable = max(placement.unplaced, sum(1 for p in pods if p.phase == "Pending" and p.unschedulable))
    if unschedulable:
        hint = scale_hint(component, placement, unschedulable)
        need = f"{cores(cpu)} CPU" if cpu else "room"
        if cpu and placement.memory:
            need += f" and {format_memory(placement.memory)} memory"
        if placement.one_per_node:
            need += " and its ports"
        return (
            Reason.INSUFFICIENT_CPU,
            (
                f"{unschedulable} of {placement.replicas} {component.name} replicas Pending: "
                f"no {group} node has {need} free{spread} — {hint}"
            ),
        )
    return None


def _failing_message(component: Component, reasons: list[str]) -> str:
    reason = max(set(reasons), key=reasons.count)
    head = f"{len(reasons)} {component.name} replicas failing: {reason}"
    if "Image" in reason and in_cluster_registry(component.image):
        image = resolve_image(component.image)
        name = component.image.partition("/")[2]
        return f"{head} — is {image} in the registry? `clusterous-k8s images`, `clusterous-k8s build-image DIR {name}`"
    if "Image" in reason:
        return (
            f"{head} — can {resolve_image(component.image)} be pulled? A short name is Docker Hub's; "
            "an image built on the cluster is registry:5000/NAME"
        )
    return f"{head} — see `clusterous-k8s logs {component.name}`"


def _ready_condition(components: list[ComponentStatus]) -> dict:
    if all(c.state == ComponentState.READY for c in components):
        return _condition(ConditionType.READY, True, Reason.ALL_REPLICAS_READY, "every replica is ready")
    first = next(c for c in components if c.state != ComponentState.READY)
    reason = {
        ComponentState.WAITING: Reason.WAITING_FOR_DEPENDENCY,
        ComponentState.DEPLOYING: Reason.REPLICAS_NOT_READY,
    }.get(first.state, first.blocked_reason or Reason.REPLICAS_NOT_READY)
    message = "; ".join(c.message for c in components if c.state != ComponentState.READY)
    return _condition(ConditionType.READY, False, reason, message)


def _condition(kind: ConditionType, ok: bool, reason: Reason, message: str) -> dict:
    status = "True" if ok else "False"
    return {"type": kind.value, "status": status, "reason": reason.value, "message": message}


def _assemble(
    phase: Phase,
    generation: int | None,
    components: list[ComponentStatus],
    conditions: list[dict],
    message: str,
    previous: Mapping,
    now: str,
    totals: tuple[int, int] = (0, 0),
) -> dict:
    before = {c.get("type"): c for c in previous.get("conditions") or []}
    for condition in conditions:
        old = before.get(condition["type"])
        same = old is not None and old.get("status") == condition["status"]
        condition["lastTransitionTime"] = (
            old.get("lastTransitionTime", now) if old is not None and same else now
        )
    status = {
        "phase": phase.value,
        "ready": f"{totals[0]}/{totals[1]}",
        "readyReplicas": totals[0],
        "desiredReplicas": totals[1],
        "message": message,
        "components": [c.as_dict() for c in components],
        "conditions": conditions,
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status
