"""The autoscaler's decisions: pure, one per elastic node group, from what Kubernetes shows.

Inputs are the Node and Pod objects as the API returns them (JSON dicts), each group's bounds,
how many of its instances run in EC2 without a Node yet (`launching`), the memory of earlier
rounds (`Memory`) and the time. No I/O here: autoscaler.py lists, acts and records; the tests
and the bench reach the rules without a cluster. The rules (docs/elastic.md):

- grow when pods of the group are unschedulable for lack of CPU or memory (kube-scheduler's
  `PodScheduled=False`, reason `Unschedulable`, message naming `Insufficient cpu|memory`), or
  when the group has no node at all: by as many nodes of the group's size as the pending
  requests need (first fit, largest first), minus the nodes on their way (instances without a
  Node, Nodes not Ready yet), capped by `max`;
  all of it in one decision (one RunInstances);
- shrink when nodes of the group ran no application pod (DaemonSet and static pods do not count)
  for `idle_minutes`: the newest idle nodes first, never below `min`, drained before they go;
- below `min` (nodes lost) grow back to it;
- after any change the group rests for `cooldown_seconds`, and never shrinks while it has
  pending pods or launching nodes: a burst of pending pods is one decision, and nothing flaps;
- a spot node with an interruption notice (spot.notice) counts as gone: its busy nodes are
  replaced at once, in the cooldown too, without starting one (`_replace_interrupted`).
- with the budget reached (`Budget`), no group grows for pending pods: idle nodes still go
  down to `min`, and pending pods no longer hold them (`budget_gate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from clusterous_core.names import GROUP_LABEL
from clusterous_operator.spec import MI, cpu_millicores, memory_bytes
from clusterous_provisioner.kubeobjects import belongs_to_node, node_ready
from clusterous_provisioner.spot import notice

DEFAULT_IDLE_MINUTES = 15
DEFAULT_COOLDOWN_SECONDS = 300
CAPACITY_REASONS = ("Insufficient cpu", "Insufficient memory")


@dataclass(frozen=True)
class GroupBounds:
    """An elastic group as `up` recorded it: its instance type and bounds."""

    name: str
    instance_type: str
    min: int
    max: int
    spot: bool | None = None  # None: not recorded (a record from before), learnt from a member
    spot_fallback: str | None = None  # "on-demand" when EC2 has no spot capacity


@dataclass(frozen=True)
class Settings:
    idle_minutes: float = DEFAULT_IDLE_MINUTES
    cooldown_seconds: float = DEFAULT_COOLDOWN_SECONDS
    suspended_at: float = 0.0  # epoch seconds of the last `suspend` (idle_clock_start)
    resumed_at: float = 0.0  # and of the `resume` after it


@dataclass(frozen=True)
class Memory:
    """What one round leaves the next (epoch seconds): the last change per group, and when each
    node last ran an application pod. Kept in the autoscaler ConfigMap, so a restart forgets nothing."""

    last_change: Mapping[str, float] = field(default_factory=dict)
    busy_at: Mapping[str, float] = field(default_factory=dict)
    interrupted: Mapping[str, float] = field(default_factory=dict)  # handled notices, by node


@dataclass(frozen=True)
class Budget:
    """What the cluster has spent and may spend (USD; spending.py): at the limit nothing grows."""

    spent: float
    limit: float | None = None

    @property
    def reached(self) -> bool:
        return self.limit is not None and self.spent >= self.limit


@dataclass(frozen=True)
class Decision:
    group: str
    action: str  # "grow" | "shrink" | "none"
    count: int = 0  # nodes to add or remove
    nodes: tuple[str, ...] = ()  # shrink: the Nodes to drain and remove, newest first;
    # otherwise the interrupted spot Nodes it answers (a grow then replaces them)
    reason: str = ""
    current: int = 0  # nodes now (registered + launching)


# --- reading Kubernetes objects ----------------------------------------------------------------


def node_group(node: Mapping) -> str | None:
    return ((node.get("metadata") or {}).get("labels") or {}).get(GROUP_LABEL)


def created_at(obj: Mapping) -> float:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return 0.0
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def is_app_pod(pod: Mapping) -> bool:
    """Work a node is kept for: not a DaemonSet's pod, not a static pod, not finished."""
    if belongs_to_node(pod):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def pod_requests(pod: Mapping) -> tuple[int, int]:
    """(millicores, bytes) the scheduler counts: containers summed, init containers at their max."""

    def of(container: Mapping) -> tuple[int, int]:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return cpu_millicores(wanted.get("cpu", 0)), memory_bytes(wanted.get("memory", 0))

    spec = pod.get("spec") or {}
    main = [of(c) for c in spec.get("containers") or []]
    init = [of(c) for c in spec.get("initContainers") or []]
    cpu, mem = sum(c for c, _ in main), sum(m for _, m in main)
    return max([cpu, *(c for c, _ in init)]), max([mem, *(m for _, m in init)])


def wanted_groups(pod: Mapping) -> list[str]:
    """The node groups a pod may run on: its node selector, else its required node affinity."""
    spec = pod.get("spec") or {}
    selected = (spec.get("nodeSelector") or {}).get(GROUP_LABEL)
    if selected:
        return [selected]
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {})  # fmt: skip
    found: list[str] = []
    for term in required.get("nodeSelectorTerms") or []:
        for expression in term.get("matchExpressions") or []:
            if expression.get("key") == GROUP_LABEL and expression.get("operator") == "In":
                found += [v for v in expression.get("values") or [] if v not in found]
    return found


def unschedulable_message(pod: Mapping) -> str | None:
    """kube-scheduler's message for a Pending pod it found no node for, else None."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    if status.get("phase") != "Pending" or (pod.get("spec") or {}).get("nodeName"):
        return None
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return condition.get("message") or ""
    return None


# --- the rules ---------------------------------------------------------------------------------


def nodes_needed(requests: Sequence[tuple[int, int]], capacity: tuple[int, int]) -> tuple[int, int]:
    """(new nodes of `capacity` that hold `requests`, requests no such node can hold): first fit,
    largest first, as a pod cannot span nodes."""
    cpu_cap, mem_cap = capacity
    bins: list[list[int]] = []
    too_big = 0
    for cpu, mem in sorted(requests, reverse=True):
        if cpu > cpu_cap or mem > mem_cap:
            too_big += 1
            continue
        spot = next((b for b in bins if b[0] >= cpu and b[1] >= mem), None)
        if spot is None:
            spot = [cpu_cap, mem_cap]
            bins.append(spot)
        spot[0] -= cpu
        spot[1] -= mem
    return len(bins), too_big


def node_capacity(group: str, nodes: Sequence[Mapping], pods: Sequence[Mapping]) -> tuple[int, int] | None:
    """What a new node of the group offers app pods: a Ready node's allocatable minus what its
    DaemonSet pods request (every new node gets those too); None when the group has no Ready node."""
    ready = sorted((n for n in nodes if node_group(n) == group and node_ready(n)[0]), key=created_at)
    if not ready:
        return None
    node = ready[-1]
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    cpu, mem = cpu_millicores(allocatable.get("cpu", 0)), memory_bytes(allocatable.get("memory", 0))
    name = node["metadata"]["name"]
    for pod in pods:
        if (pod.get("spec") or {}).get("nodeName") == name and not is_app_pod(pod):
            taken = pod_requests(pod)
            cpu, mem = cpu - taken[0], mem - taken[1]
    return max(0, cpu), max(0, mem)


def remember_busy(nodes: Sequence[Mapping], pods: Sequence[Mapping], memory: Memory, now: float) -> Memory:
    """Stamp `now` on every node running an app pod; forget nodes that are gone."""
    names = {n["metadata"]["name"] for n in nodes}
    busy = {n: t for n, t in memory.busy_at.items() if n in names}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if isinstance(node, str) and node in names and is_app_pod(pod):
            busy[node] = now
    return replace(memory, busy_at=busy)


def decide(
    groups: Sequence[GroupBounds],
    nodes: Sequence[Mapping],
    pods: Sequence[Mapping],
    launching: Mapping[str, int],
    memory: Memory,
    now: float,
    settings: Settings = Settings(),
    type_capacity: Mapping[str, tuple[int, int]] | None = None,
    budget: Budget | None = None,
) -> tuple[list[Decision], Memory]:
    """One decision per group, and the memory for the next round (a grow or shrink starts the
    group's cooldown: the caller acts on every decision it is given).

    `type_capacity` is a group's per-node (millicores, bytes) when it has no Ready node to learn
    it from (the instance type's, from EC2). `budget`: see budget_gate."""
    memory = remember_busy(nodes, pods, memory, now)
    pending: dict[str, list[Mapping]] = {g.name: [] for g in groups}
    for pod in pods:
        message = unschedulable_message(pod)
        if message is None:
            continue
        for name in wanted_groups(pod):
            if name in pending:
                pending[name].append(pod)
                break
    decisions = []
    changed = dict(memory.last_change)
    interrupted = {n["metadata"]["name"] for n in nodes if notice(n) is not None}
    for group in groups:
        members = [
            n for n in nodes if node_group(n) == group.name and n["metadata"]["name"] not in interrupted
        ]
        gone = [n for n in nodes if node_group(n) == group.name and n["metadata"]["name"] in interrupted]
        over = budget is not None and budget.reached  # no replacement beyond min either
        decision = (not over and _replace_interrupted(
            group, members, gone, launching.get(group.name, 0), memory, now, settings
        )) or _decide_group(
            group, members, pods, [] if over else pending[group.name], launching.get(group.name, 0), memory,
            now, settings, (type_capacity or {}).get(group.name),
        )  # fmt: skip
        if over:
            decision = budget_gate(decision, len(pending[group.name]), budget)
        if decision.action == "shrink" or (decision.action == "grow" and not decision.nodes):
            changed[group.name] = now  # a replacement does not start a cooldown: it restores
        decisions.append(decision)
    handled = {name: memory.interrupted.get(name, now) for name in interrupted}
    return decisions, replace(memory, last_change=changed, interrupted=handled)


def _replace_interrupted(
    group: GroupBounds, members: list[Mapping], gone: list[Mapping], launching: int, memory: Memory, now: float,
    settings: Settings,
) -> Decision | None:  # fmt: skip
    """The answer to new interruption notices in the group, or None when there are none: one
    replacement per interrupted node that ran app pods within `idle_minutes` (an idle one would
    only be shrunk again), and at least back to `min`; capped by `max`. Cooldown or not."""
    fresh = [n for n in gone if n["metadata"]["name"] not in memory.interrupted]
    if not fresh:
        return None
    names = tuple(sorted(n["metadata"]["name"] for n in fresh))
    current = len(members) + launching
    busy = [
        n
        for n in fresh
        if now - max(memory.busy_at.get(n["metadata"]["name"], 0.0), created_at(n))
        < settings.idle_minutes * 60
    ]
    add = min(max(len(busy), group.min - current), group.max - current)
    what = f"spot interruption of {', '.join(names)}"
    if add <= 0:
        why = f"at max {group.max}" if len(busy) > 0 else f"idle, and {current} node(s) >= min {group.min}"
        return Decision(group.name, "none", 0, names, f"{what}: no replacement ({why})", current)
    return Decision(
        group.name, "grow", add, names, f"{what}: {add} replacement(s) × {group.instance_type}", current
    )


def budget_gate(decision: Decision, pending: int, budget) -> Decision:
    """With the budget reached the group was decided as if nothing were pending: it never grows
    for pods (only back to `min`), and its idle nodes go as usual; the reason says so."""
    words = f"budget reached (${budget.spent:.2f} of ${budget.limit:.2f})"
    reason = decision.reason
    if pending:
        words += f": {pending} pod(s) pending, not grown for"
        reason = reason.removesuffix("; nothing pending")  # they were left out on purpose
    return replace(decision, reason=f"{words}; {reason}")


def _decide_group(
    group: GroupBounds,
    members: list[Mapping],
    pods: Sequence[Mapping],
    pending: list[Mapping],
    launching: int,
    memory: Memory,
    now: float,
    settings: Settings,
    type_capacity: tuple[int, int] | None,
) -> Decision:
    current = len(members) + launching
    none = Decision(group.name, "none", current=current)
    since = now - memory.last_change.get(group.name, float("-inf"))
    if since < settings.cooldown_seconds:
        wait = settings.cooldown_seconds - since
        return replace(
            none, reason=f"cooling down: last change {since:.0f} s ago, next decision in {wait:.0f} s"
        )
    if current < group.min:
        add = group.min - current
        return Decision(
            group.name, "grow", add, reason=f"{current} node(s), below min {group.min}", current=current
        )

    waiting = [p for p in pending if not members or _for_capacity(unschedulable_message(p) or "")]
    if waiting:  # nodes still booting (no Node yet, or not Ready yet) will take some of them
        coming = launching + sum(1 for n in members if not node_ready(n)[0])
        return _grow(group, members, pods, waiting, coming, current, type_capacity)

    if launching or pending:  # never take nodes away while some are coming or pods wait
        what = f"{launching} node(s) launching" if launching else f"{len(pending)} pod(s) pending"
        return replace(none, reason=f"{what} ({_first_reason(pending)})" if pending else what)
    idle_for = settings.idle_minutes * 60
    start = idle_clock_start(settings, now)
    idle = [
        n
        for n in members
        if now - max(memory.busy_at.get(n["metadata"]["name"], 0.0), created_at(n), start) >= idle_for
    ]
    removable = min(len(idle), current - group.min)
    if removable <= 0:
        if idle:
            return replace(none, reason=f"{len(idle)} idle node(s), but the group is at min {group.min}")
        busy = sum(1 for n in members if memory.busy_at.get(n["metadata"]["name"]) == now)
        return replace(none, reason=f"{current} node(s), {busy} running app pods; nothing pending")
    newest = sorted(idle, key=lambda n: (created_at(n), n["metadata"]["name"]), reverse=True)[:removable]
    names = tuple(n["metadata"]["name"] for n in newest)
    return Decision(
        group.name,
        "shrink",
        len(names),
        names,
        f"{len(names)} node(s) ran no app pod for {settings.idle_minutes:g} min (min {group.min})",
        current,
    )


def idle_clock_start(settings: Settings, now: float) -> float:
    """Idle time never counts across a `suspend`: it counts from the last `resume`, and from now
    while a suspend has no resume recorded after it (the cluster is coming back; `resume` records
    its time once the cluster is ready)."""
    return now if settings.suspended_at > settings.resumed_at else settings.resumed_at


def _first_reason(pending: list[Mapping]) -> str:
    """kube-scheduler's message for the first pending pod, for a reason a person can act on."""
    return (unschedulable_message(pending[0]) or "").split(" preemption:")[0] if pending else ""


def _for_capacity(message: str) -> bool:
    return any(reason in message for reason in CAPACITY_REASONS)


def _grow(group, members, pods, waiting, coming, current, type_capacity) -> Decision:
    capacity = node_capacity(group.name, members, pods) or type_capacity
    none = Decision(group.name, "none", current=current)
    if capacity is None:
        return replace(none, reason=f"{len(waiting)} pod(s) pending, size of a {group.instance_type} unknown")
    needed, too_big = nodes_needed([pod_requests(p) for p in waiting], capacity)
    big = (
        f"; {too_big} pod(s) ask for more than a {group.instance_type} node offers "
        f"({capacity[0]}m CPU, {capacity[1] // MI} Mi)"
        if too_big
        else ""
    )
    add = needed - coming
    if add <= 0:
        why = f"{coming} node(s) on their way for them" if needed else "none fits a new node"
        return replace(none, reason=f"{len(waiting)} pod(s) pending; {why}{big}")
    room = group.max - current
    if room <= 0:
        return replace(
            none, reason=f"{len(waiting)} pod(s) pending, but the group is at max {group.max}{big}"
        )
    add = min(add, room)
    capped = f" (capped by max {group.max})" if add < needed - coming else ""
    return Decision(
        group.name,
        "grow",
        add,
        reason=f"{len(waiting)} pod(s) unschedulable for lack of CPU/memory: "
        f"{add} × {group.instance_type}{capped}{big}",
        current=current,
    )
