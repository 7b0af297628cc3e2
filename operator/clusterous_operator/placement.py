"""Where an application's replicas fit: `auto` counts, CPUs and memory from the group's Nodes.

A pod cannot span nodes, so capacity is counted node by node, never as a total divided by the
per-replica CPU. Fixed replicas are placed first, each on the node with the most CPU free (as
the scheduler's default scoring would), then `auto` components take turns filling every node.
A replica fits a node when both its CPU and its memory fit what is free there.

Memory follows CPU (as in Clusterous): without `memory:`, a replica requests its CPU's share
of the memory free beside it, at the ratio of the group's tightest node (free memory ÷ free
CPU, after other pods' requests), rounded down to Mi. So replicas that fill a node's free CPU
fit its free memory too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import cast

from clusterous_core.names import GROUP_LABEL
from clusterous_operator.spec import (
    AUTO,
    MI,
    Component,
    Spec,
    SpecError,
    cpu_millicores,
    format_cpu,
    format_memory,
    memory_bytes,
)

_BLOCKING_TAINTS = ("NoSchedule", "NoExecute")
DEFAULT_MEMORY = 64 * MI  # a component with neither cpu nor memory: enough to be counted


@dataclass(frozen=True)
class Reserved:
    """What pods outside the application request on one node; `system_*` is the part of it
    requested by pods of no application (DaemonSets, CoreDNS...), which stay when apps quit."""

    cpu_m: int = 0
    memory: int = 0  # bytes
    system_cpu_m: int = 0
    system_memory: int = 0


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    group: str
    cpu_m: int  # allocatable millicores
    memory: int = 0  # allocatable bytes


@dataclass(frozen=True)
class ComponentPlacement:
    """How many replicas a component gets, at what CPU each, and what could not be placed."""

    replicas: int
    cpu_m: int | None  # None: no CPU request
    unplaced: int = 0  # fixed replicas no node has room for
    group_nodes: int = 0  # usable nodes in the component's group
    per_node: Mapping[str, int] = field(default_factory=dict)
    memory: int | None = None  # bytes per replica; None only when the group has no usable node
    one_per_node: bool = False  # hostNetwork with ports: host ports collide, one replica a node
    per_new_node: int = 0  # replicas one more node of the group would hold (for the scale hint)
    elastic: bool = False  # the autoscaler may grow the group (the hint names it, not `scale`)


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
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        usable.append(
            NodeCapacity(
                node["metadata"]["name"],
                group,
                _millicores_or_zero(allocatable.get("cpu", "0")),
                _bytes_or_zero(allocatable.get("memory", "0")),
            )
        )
    return sorted(usable, key=lambda n: n.name)


def place(
    spec: Spec,
    nodes: Iterable[Mapping],
    reserved: Mapping[str, Reserved] | None = None,
    elastic: Iterable[str] = (),
) -> dict[str, ComponentPlacement]:
    """Replicas, per-replica CPU and memory of every component; `reserved` is what pods outside
    this application already request on each node. An `auto` component on an `elastic` group
    with no usable node gets one replica: its Pending pod is what makes the autoscaler grow the
    group from zero (docs/elastic.md); once nodes join, `auto` fills them."""
    capacity = usable_nodes(nodes)
    result: dict[str, ComponentPlacement] = {}
    for group in dict.fromkeys(c.group for c in spec.components):
        members = [c for c in spec.components if c.group == group]
        group_nodes = [n for n in capacity if n.group == group]
        result.update(_place_group(members, group_nodes, reserved or {}))
        if group in set(elastic):
            for c in members:
                one = not group_nodes and c.replicas == AUTO
                result[c.name] = replace(
                    result[c.name], elastic=True, replicas=1 if one else result[c.name].replicas
                )
    return {c.name: result[c.name] for c in spec.components}


def one_per_node(component: Component) -> bool:
    """A hostNetwork component with ports binds them on the node itself: a second replica on
    the same node could not bind them (the scheduler refuses it: "didn't have free ports")."""
    return component.host_network and bool(component.ports)


def check_fits(spec: Spec, nodes: Iterable[Mapping], reserved: Mapping[str, Reserved] | None = None) -> None:
    """An explicit `cpu:` or `memory:` must fit some usable node of its group beside the
    cluster's own pods (a request that fits no node would leave every replica Pending; other
    applications' pods are not counted: they go when their app quits). Groups without usable
    nodes are not checked: nothing fits there yet."""
    free = _free(usable_nodes(nodes), reserved or {}, system=True)
    for i, component in enumerate(spec.components):
        room = [(cpu, mem) for (group, cpu, mem) in free.values() if group == component.group]
        if not room:
            continue
        most_cpu, most_memory = max(cpu for cpu, _ in room), max(mem for _, mem in room)
        larger = f"a {component.group} node (or a larger {component.group} instance type)"
        if isinstance(component.cpu_m, int) and component.cpu_m > most_cpu:
            raise SpecError(
                f"spec.components[{i}].cpu",
                f"at most {format_cpu(most_cpu)}, the most CPU free on {larger}",
                format_cpu(component.cpu_m),
            )
        if component.memory is not None and component.memory > most_memory:
            raise SpecError(
                f"spec.components[{i}].memory",
                f"at most {format_memory(most_memory // MI * MI)}, the most memory free on {larger}",
                format_memory(component.memory),
            )


def auto_cpu_share(
    members: list[Component], group_nodes: list[NodeCapacity], reserved: Mapping[str, Reserved] | None = None
) -> int | None:
    """`cpu: auto`: the CPU left on the group's tightest node (allocatable minus what pods of
    other apps and the cluster's own agents request there) shared evenly among the app's
    components on the group, so a replica fits on any of its nodes. None when the group has no
    usable node."""
    if not group_nodes:
        return None
    free = _free(group_nodes, reserved or {})
    return min(cpu for (_, cpu, _) in free.values()) // len(members)


def memory_request(
    component: Component, cpu_m: int | None, group_nodes: list[NodeCapacity], reserved: Mapping[str, Reserved]
) -> int | None:
    """Bytes per replica: `memory:` when given; else the CPU's share of the memory free beside
    it, at the tightest ratio of free memory to free CPU among the nodes its CPU fits, rounded
    down to Mi; a component without CPU gets DEFAULT_MEMORY. None when the group has no usable
    node. Where the CPU fits no node now, the ratio is that of the nodes beside the cluster's
    own pods only: what a replica gets once other apps quit or a node is added."""
    if component.memory is not None:
        return component.memory
    if not cpu_m:
        return DEFAULT_MEMORY
    for system in (False, True):
        free = _free(group_nodes, reserved, system=system).values()
        shares = [cpu_m * mem // cpu for (_, cpu, mem) in free if cpu >= cpu_m and cpu_m * mem // cpu >= MI]
        if shares:
            return min(shares) // MI * MI
    shares = [cpu_m * n.memory // n.cpu_m for n in group_nodes if n.cpu_m > 0]  # nothing fits anywhere
    return min(shares) // MI * MI if shares else None


def _free(
    group_nodes: list[NodeCapacity], reserved: Mapping[str, Reserved], system: bool = False
) -> dict[str, tuple[str, int, int]]:
    """Per node: its group, then CPU (millicores) and memory (bytes) not requested by others
    (with `system`, by the cluster's own pods only).

    The one place allocatable minus requested is computed, for shares, counts, checks and the
    scale hint."""
    free = {}
    for n in group_nodes:
        taken = reserved.get(n.name, Reserved())
        cpu, memory = (taken.system_cpu_m, taken.system_memory) if system else (taken.cpu_m, taken.memory)
        free[n.name] = (n.group, max(0, n.cpu_m - cpu), max(0, n.memory - memory))
    return free


def _per_new_node(
    component: Component,
    need: tuple[int, int],
    group_nodes: list[NodeCapacity],
    reserved: Mapping[str, Reserved],
) -> int:
    """Replicas of `component` one more node of the group would hold: the group's largest node
    less what the cluster's own pods take on every node (the least any node of it carries)."""
    if not group_nodes:
        return 0
    largest = max(group_nodes, key=lambda n: (n.cpu_m, n.memory))
    taken = [reserved.get(n.name, Reserved()) for n in group_nodes]
    cpu = largest.cpu_m - min(t.system_cpu_m for t in taken)
    memory = largest.memory - min(t.system_memory for t in taken)
    fits = [room // want for room, want in ((cpu, need[0]), (memory, need[1])) if want > 0]
    count = max(0, min(fits)) if fits else 0
    return min(count, 1) if one_per_node(component) else count


def _place_group(
    members: list[Component], group_nodes: list[NodeCapacity], reserved: Mapping[str, Reserved]
) -> dict[str, ComponentPlacement]:
    share = auto_cpu_share(members, group_nodes, reserved)
    cpu = {c.name: share if c.cpu_m == AUTO else c.cpu_m for c in members}
    memory = {c.name: memory_request(c, cpu[c.name], group_nodes, reserved) for c in members}
    need = {c.name: (cpu[c.name] or 0, memory[c.name] or 0) for c in members}
    free = {name: [cpu_m, mem] for name, (_, cpu_m, mem) in _free(group_nodes, reserved).items()}
    counts: dict[str, dict[str, int]] = {c.name: {} for c in members}
    unplaced = {c.name: 0 for c in members}
    for component in (c for c in members if c.replicas != AUTO):
        for _ in range(cast(int, component.replicas)):  # not AUTO: filtered above
            taken = counts[component.name] if one_per_node(component) else {}
            node = _roomiest({n: f for n, f in free.items() if n not in taken}, need[component.name])
            if node is None:
                unplaced[component.name] += 1
                continue
            free[node][0] -= need[component.name][0]
            free[node][1] -= need[component.name][1]
            counts[component.name][node] = counts[component.name].get(node, 0) + 1
    autos = [c for c in members if c.replicas == AUTO and cpu[c.name]]
    for node in free:
        _fill_node(node, autos, need, free, counts)
    return {
        c.name: ComponentPlacement(
            replicas=sum(counts[c.name].values()) if c.replicas == AUTO else c.replicas,
            cpu_m=cpu[c.name],
            unplaced=unplaced[c.name],
            group_nodes=len(group_nodes),
            per_node=dict(counts[c.name]),
            memory=memory[c.name],
            one_per_node=one_per_node(c),
            per_new_node=_per_new_node(c, need[c.name], group_nodes, reserved),
        )
        for c in members
    }


def _fill_node(
    node: str,
    autos: list[Component],
    need: Mapping[str, tuple[int, int]],
    free: dict[str, list[int]],
    counts: dict[str, dict[str, int]],
) -> None:
    """Auto components take turns on one node, one replica each round, until none fits."""
    placed = True
    while placed:
        placed = False
        for component in autos:
            cpu, mem = need[component.name]
            if one_per_node(component) and counts[component.name].get(node):
                continue
            if 0 < cpu <= free[node][0] and mem <= free[node][1]:
                free[node][0] -= cpu
                free[node][1] -= mem
                counts[component.name][node] = counts[component.name].get(node, 0) + 1
                placed = True


def _roomiest(free: Mapping[str, list[int]], need: tuple[int, int]) -> str | None:
    """The node with the most CPU free that fits `need` (CPU, memory; ties: by name), or None."""
    fitting = [name for name, (cpu, mem) in free.items() if cpu >= need[0] and mem >= need[1]]
    return min(fitting, key=lambda name: (-free[name][0], name), default=None)


def _labels(node: Mapping) -> Mapping[str, str]:
    return (node.get("metadata") or {}).get("labels") or {}


def _is_ready(node: Mapping) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _bytes_or_zero(quantity: object) -> int:
    try:
        return memory_bytes(quantity)
    except ValueError:
        return 0


def _millicores_or_zero(quantity: object) -> int:
    try:
        return cpu_millicores(quantity)
    except ValueError:
        return 0
