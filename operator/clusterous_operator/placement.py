"""Where an application's replicas fit: `auto` counts and CPUs from the group's Nodes.

A pod cannot span nodes, so capacity is counted node by node, never as a total divided by the
per-replica CPU. Fixed replicas are placed first, each on the node with the most CPU free (as
the scheduler's default scoring would), then `auto` components take turns filling every node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from clusterous_operator.spec import AUTO, Component, Spec, cpu_millicores

GROUP_LABEL = "clusterous.io/group"
_BLOCKING_TAINTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    group: str
    cpu_m: int  # allocatable millicores


@dataclass(frozen=True)
class ComponentPlacement:
    """How many replicas a component gets, at what CPU each, and what could not be placed."""

    replicas: int
    cpu_m: int | None  # None: no CPU request
    unplaced: int = 0  # fixed replicas no node has room for
    group_nodes: int = 0  # usable nodes in the component's group
    largest_node_m: int = 0  # allocatable CPU of the group's largest usable node
    per_node: Mapping[str, int] = field(default_factory=dict)
    one_per_node: bool = False  # hostNetwork with ports: host ports collide, one replica a node


def node_groups(nodes: Iterable[Mapping]) -> set[str]:
    """Every group a Node is labelled with, Ready or not: the groups the cluster has."""
    return {g for n in nodes if (g := _labels(n).get(GROUP_LABEL))}


def usable_nodes(nodes: Iterable[Mapping]) -> list[NodeCapacity]:
    """Nodes an application pod can land on: Ready, schedulable, untainted, in a group."""
    usable = []
    for node in nodes:
        group = _labels(node).get(GROUP_LABEL)
        if not group or not _is_ready(node) or (node.get("spec") or {}).get("unschedulable"):
            continue
        if any(t.get("effect") in _BLOCKING_TAINTS for t in (node.get("spec") or {}).get("taints") or []):
            continue
        allocatable = ((node.get("status") or {}).get("allocatable") or {}).get("cpu", "0")
        usable.append(NodeCapacity(node["metadata"]["name"], group, _millicores_or_zero(allocatable)))
    return sorted(usable, key=lambda n: n.name)


def place(
    spec: Spec, nodes: Iterable[Mapping], reserved: Mapping[str, int] | None = None
) -> dict[str, ComponentPlacement]:
    """Replicas and per-replica CPU of every component; `reserved` is CPU (millicores) per
    node already requested by pods outside this application."""
    capacity = usable_nodes(nodes)
    result: dict[str, ComponentPlacement] = {}
    for group in dict.fromkeys(c.group for c in spec.components):
        members = [c for c in spec.components if c.group == group]
        group_nodes = [n for n in capacity if n.group == group]
        result.update(_place_group(members, group_nodes, reserved or {}))
    return {c.name: result[c.name] for c in spec.components}


def one_per_node(component: Component) -> bool:
    """A hostNetwork component with ports binds them on the node itself: a second replica on
    the same node could not bind them (the scheduler refuses it: "didn't have free ports")."""
    return component.host_network and bool(component.ports)


def auto_cpu_share(
    members: list[Component], group_nodes: list[NodeCapacity], reserved: Mapping[str, int] | None = None
) -> int | None:
    """`cpu: auto`: the CPU left on the group's tightest node (allocatable minus what pods of
    other apps and the cluster's own agents request there) shared evenly among the app's
    components on the group, so a replica fits on any of its nodes. None when the group has no
    usable node."""
    if not group_nodes:
        return None
    reserved = reserved or {}
    return min(max(0, n.cpu_m - reserved.get(n.name, 0)) for n in group_nodes) // len(members)


def _place_group(
    members: list[Component], group_nodes: list[NodeCapacity], reserved: Mapping[str, int]
) -> dict[str, ComponentPlacement]:
    share = auto_cpu_share(members, group_nodes, reserved)
    cpu = {c.name: share if c.cpu_m == AUTO else c.cpu_m for c in members}
    free = {n.name: max(0, n.cpu_m - reserved.get(n.name, 0)) for n in group_nodes}
    counts: dict[str, dict[str, int]] = {c.name: {} for c in members}
    unplaced = {c.name: 0 for c in members}
    for component in (c for c in members if c.replicas != AUTO):
        for _ in range(component.replicas):
            taken = counts[component.name] if one_per_node(component) else {}
            node = _roomiest({n: c for n, c in free.items() if n not in taken}, cpu[component.name] or 0)
            if node is None:
                unplaced[component.name] += 1
                continue
            free[node] -= cpu[component.name] or 0
            counts[component.name][node] = counts[component.name].get(node, 0) + 1
    autos = [c for c in members if c.replicas == AUTO and cpu[c.name]]
    for node in free:
        _fill_node(node, autos, cpu, free, counts)
    largest = max((n.cpu_m for n in group_nodes), default=0)
    return {
        c.name: ComponentPlacement(
            replicas=sum(counts[c.name].values()) if c.replicas == AUTO else c.replicas,
            cpu_m=cpu[c.name],
            unplaced=unplaced[c.name],
            group_nodes=len(group_nodes),
            largest_node_m=largest,
            per_node=dict(counts[c.name]),
            one_per_node=one_per_node(c),
        )
        for c in members
    }


def _fill_node(
    node: str,
    autos: list[Component],
    cpu: Mapping[str, int | None],
    free: dict[str, int],
    counts: dict[str, dict[str, int]],
) -> None:
    """Auto components take turns on one node, one replica each round, until none fits."""
    placed = True
    while placed:
        placed = False
        for component in autos:
            need = cpu[component.name] or 0
            if one_per_node(component) and counts[component.name].get(node):
                continue
            if 0 < need <= free[node]:
                free[node] -= need
                counts[component.name][node] = counts[component.name].get(node, 0) + 1
                placed = True


def _roomiest(free: Mapping[str, int], need: int) -> str | None:
    """The node with the most CPU free that fits `need` (ties: by name), or None."""
    fitting = [name for name, cpu in free.items() if cpu >= need]
    return min(fitting, key=lambda name: (-free[name], name), default=None)


def _labels(node: Mapping) -> Mapping[str, str]:
    return (node.get("metadata") or {}).get("labels") or {}


def _is_ready(node: Mapping) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _millicores_or_zero(quantity: object) -> int:
    try:
        return cpu_millicores(quantity)
    except ValueError:
        return 0
