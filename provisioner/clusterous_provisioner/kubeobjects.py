"""Pure checks of Kubernetes objects as the API returns them (JSON dicts): is a Node Ready,
which Node is an EC2 instance's, is a Deployment available, a DaemonSet ready, a CRD
established, why a pod is not ready.

Shared by `up`'s wait (readiness.py), the drain and the autoscaler, so each question is answered
once; no I/O here, the tests reach every rule without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from clusterous_provisioner import tags

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass(frozen=True)
class Member:
    """An instance of the cluster as the node checks see it."""

    instance_id: str
    group: str | None  # None: the controller
    private_ip: str | None
    private_dns: str | None

    @property
    def where(self) -> str:
        return "controller" if self.group is None else f"group {self.group}"


def members_of(instances: list[dict]) -> list[Member]:
    """EC2 DescribeInstances entries (running ones) → members, the controller first."""
    found = []
    for instance in instances:
        if instance.get("State", {}).get("Name") not in (None, "pending", "running"):
            continue
        t = tags.as_dict(instance.get("Tags"))
        group = None if t.get(tags.ROLE) == "controller" else t.get(tags.GROUP)
        found.append(
            Member(
                instance["InstanceId"],
                group,
                instance.get("PrivateIpAddress"),
                instance.get("PrivateDnsName"),
            )
        )
    return sorted(found, key=lambda m: (m.group is not None, m.group or "", m.instance_id))


def belongs_to_node(pod: Mapping) -> str | None:
    """Why a pod belongs to its node ("DaemonSet", "static pod"), else None: a drain leaves such a
    pod (it would come straight back) and the autoscaler does not count it as work."""
    meta = pod.get("metadata") or {}
    if any(o.get("kind") == "DaemonSet" for o in meta.get("ownerReferences") or []):
        return "DaemonSet"
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return "static pod"
    return None


def internal_ip(node: Mapping) -> str | None:
    """The Node's InternalIP: the instance's private address, how the autoscaler pairs the two."""
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            return address.get("address")
    return None


def conditions(obj: Mapping | None) -> dict[str, dict]:
    """status.conditions by type (a missing status or list is no condition, not an error)."""
    return {c.get("type"): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def reason(condition: dict | None) -> str:
    """A condition's (or container state's) reason and message as one phrase a person can act on."""
    if not condition:
        return "no condition reported"
    parts = [condition.get("reason"), condition.get("message")]
    return ": ".join(p for p in parts if p) or f"status {condition.get('status')}"


def node_ready(node: Mapping) -> tuple[bool, str]:
    """The kubelet's Ready condition, with its reason when not (e.g. the CNI is not up yet)."""
    ready = conditions(node).get("Ready")
    if ready and ready.get("status") == "True":
        return True, "Ready"
    return False, f"not Ready ({reason(ready)})"


def node_addresses(node: dict) -> set[str]:
    """Every address the kubelet reported (internal IP, hostname, ...), to find an instance's Node."""
    return {a.get("address") for a in (node.get("status") or {}).get("addresses") or [] if a.get("address")}


def match_node(member: Member, nodes: list[dict]) -> dict | None:
    """The Node of an instance: its private address among the Node's, else its hostname."""
    hostname = (member.private_dns or "").split(".")[0]
    for node in nodes:
        if member.private_ip and member.private_ip in node_addresses(node):
            return node
    for node in nodes:
        name = node["metadata"]["name"]
        if hostname and name in (hostname, member.private_dns):
            return node
    return None


def crd_established(crd: dict | None) -> tuple[bool, str]:
    """Established: the API server serves the CRD's resource (objects of it can be created)."""
    if crd is None:
        return False, "not created yet"
    established = conditions(crd).get("Established")
    if established and established.get("status") == "True":
        return True, "established"
    return False, f"not established ({reason(established)})"


def observed(obj: dict) -> bool:
    """Whether the controller has seen the latest spec: before that the status describes an older one."""
    status = obj.get("status") or {}
    return status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 1)


def deployment_available(deployment: dict | None) -> tuple[bool, str]:
    """Every wanted replica available and on the latest version (much as `kubectl rollout status` waits)."""
    if deployment is None:
        return False, "not created yet"
    want = (deployment.get("spec") or {}).get("replicas", 1)
    status = deployment.get("status") or {}
    available = status.get("availableReplicas") or 0
    updated = status.get("updatedReplicas") or 0
    if available < want:
        condition = conditions(deployment).get("Available")
        extra = f" ({reason(condition)})" if condition and condition.get("status") != "True" else ""
        return False, f"{available}/{want} replicas available{extra}"
    if updated < want or not observed(deployment):
        return False, f"rolling out its latest version ({updated}/{want} updated)"
    return True, f"{available}/{want} available"


def daemonset_ready(daemonset: dict | None) -> tuple[bool, str]:
    """A ready, updated, available pod on every node the DaemonSet should run on."""
    if daemonset is None:
        return False, "not created yet"
    status = daemonset.get("status") or {}
    if not status or not observed(daemonset):
        return False, "not scheduled yet"
    want = status.get("desiredNumberScheduled", 0)
    ready = status.get("numberReady", 0)
    updated = status.get("updatedNumberScheduled", want)
    available = status.get("numberAvailable", ready)
    if min(ready, updated, available) < want:
        return False, f"{ready}/{want} pods ready"
    return True, f"{ready}/{want} ready"


def selector_text(match_labels: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((match_labels or {}).items()))


def when(event: dict) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("series") or {}).get("lastObservedTime")
        or event.get("firstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def last_events(events: list[dict], count: int = 3) -> list[str]:
    """The newest events, oldest of them first: `Warning FailedScheduling: 0/3 nodes ...`."""
    latest = sorted(events, key=when)[-count:]
    return [
        f"{e.get('type') or 'Normal'} {e.get('reason') or '?'}: {e.get('message') or ''}".strip()
        for e in latest
    ]


def pod_problem(pod: dict, events: list[dict]) -> str:
    """Why a pod is not ready, as one line: phase, unmet conditions, waiting containers, last events."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    parts = [status.get("phase") or "Pending"]
    if node := (pod.get("spec") or {}).get("nodeName"):
        parts.append(f"on {node}")
    for ctype in ("PodScheduled", "Ready"):
        condition = conditions(pod).get(ctype)
        if (
            condition
            and condition.get("status") != "True"
            and (condition.get("reason") or condition.get("message"))
        ):
            parts.append(f"{ctype}: {reason(condition)}")
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting:
            parts.append(f"container {container.get('name')} waiting: {reason(waiting)}")
        elif terminated and terminated.get("exitCode"):
            parts.append(
                f"container {container.get('name')} exited {terminated.get('exitCode')}: {reason(terminated)}"
            )
        elif container.get("restartCount"):
            parts.append(f"container {container.get('name')} restarted {container['restartCount']}×")
    text = f"pod {name}: " + "; ".join(parts)
    recent = last_events(events)
    if recent:
        text += "; last events: " + " | ".join(recent)
    return text
