"""Draining nodes before their instances are terminated: cordon, evict, delete the Node.

As `kubectl drain --ignore-daemonsets --delete-emptydir-data` does: the node is marked
unschedulable, every pod on it is evicted through the Eviction API (so PodDisruptionBudgets
are honoured; an API server that does not serve evictions gets a plain delete instead), except
DaemonSet pods (they would come straight back) and static mirror pods; once the evicted pods are
gone the Node object is deleted. `scale`/`rm-nodes` then terminate the instances.

Waiting for the pods to go is a watch on the node's pods (`kubecalls.watch_objects`): the drain
moves on the moment the API server reports the last one gone, and asks nothing while nothing
changes. Only an eviction a PodDisruptionBudget refused (429) is retried on a timer, every 5 s,
as `kubectl drain` does.

It lives in the provisioner, not the CLI, because the in-cluster autoscaler drains the same way
and ships without the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from clusterous_core.errors import Failure
from clusterous_provisioner.kubecalls import REQUEST_TIMEOUT, json_body, watch_objects
from clusterous_provisioner.kubeobjects import belongs_to_node, match_node, members_of

FORCE_HINT = "pass --force to terminate without draining (the pods on those nodes are killed)"
Report = Callable[[str], None]
# Answers are not turned into model classes: what a server sends back is not our business here.
RAW: dict[str, Any] = {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}
BLOCKED_RETRY = 5.0  # kubectl drain's wait before asking again for an eviction a budget refused


def pods_to_evict(pods: list[dict]) -> tuple[list[dict], list[str]]:
    """(pods to evict, names of pods left alone with why): DaemonSet and mirror pods stay."""
    evict, skipped = [], []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if why := belongs_to_node(pod):
            skipped.append(f"{meta.get('namespace')}/{meta['name']} ({why})")
        elif meta.get("deletionTimestamp") and (pod.get("status") or {}).get("phase") in (
            "Succeeded",
            "Failed",
        ):
            continue
        else:
            evict.append(pod)
    return evict, skipped


def nodes_of(instances: list[dict], nodes: list[dict]) -> tuple[list[str], list[str]]:
    """(names of the Nodes of these EC2 instances, ids of instances that have no Node)."""
    names, missing = [], []
    for member in members_of(instances):
        node = match_node(member, nodes)
        if node is None:
            missing.append(member.instance_id)
        else:
            names.append(node["metadata"]["name"])
    return names, missing


def _evict(core, pod: dict) -> str:
    """'evicted', 'deleted' (no Eviction API), 'gone', or 'blocked' (a disruption budget says not now)."""
    from kubernetes.client import ApiException

    meta = pod["metadata"]
    name, namespace = meta["name"], meta.get("namespace") or "default"
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
    try:
        core.create_namespaced_pod_eviction(name, namespace, body, **RAW)
        return "evicted"
    except ApiException as exc:
        if exc.status == 429:
            return "blocked"
        if exc.status == 404 and f'"{name}"' in (exc.body or ""):
            return "gone"  # the pod itself is gone (NotFound naming it), not the eviction endpoint
        if exc.status not in (404, 405):
            raise
    try:
        core.delete_namespaced_pod(name, namespace, **RAW)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return "gone"
    return "deleted"


def drain_node(api, node: str, timeout: float, report: Report, delete: bool = True) -> dict:
    """Cordon, evict (retrying while a budget blocks), wait for the pods to go, delete the Node
    (`delete=False`: keep it cordoned, for a spot node whose instance EC2 is about to take)."""
    from kubernetes import client
    from kubernetes.client import ApiException

    core = client.CoreV1Api(api)
    try:
        core.patch_node(node, {"spec": {"unschedulable": True}}, **RAW)
    except ApiException as exc:
        if exc.status == 404:
            return {"node": node, "evicted": [], "deleted": [], "skipped": [], "gone": True}
        raise
    report(f"drain {node}: cordoned")
    deadline = time.monotonic() + timeout
    done: dict[str, list[str]] = {"evicted": [], "deleted": []}
    skipped: list[str] = []
    waiting: list[str] = []
    refused = False
    while True:
        # One watch until every pod is gone; a refused eviction ends it early so it is retried.
        left = deadline - time.monotonic()
        window = min(BLOCKED_RETRY, left) if refused else left
        drained = False
        for pods in watch_objects(
            core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={node}",
            timeout=max(window, 0.1),
            _request_timeout=max(left, 1) + REQUEST_TIMEOUT,
        ):
            pending, skipped = pods_to_evict([api.sanitize_for_serialization(p) for p in pods.values()])
            if not pending:
                drained = True
                break
            waiting, refused = _evict_all(core, node, pending, done, report)
        if drained:
            break
        if time.monotonic() > deadline:
            raise Failure(
                f"drain {node}: pods still on the node after {timeout:.0f} s: {', '.join(waiting) or 'see kubectl'}",
                FORCE_HINT,
            )
    if delete:
        delete_node(core, node)
    report(f"drain {node}: " + ("Node deleted" if delete else "drained, kept cordoned"))
    return {"node": node, **done, "skipped": skipped}


def _evict_all(
    core, node: str, pending: list[dict], done: dict[str, list[str]], report: Report
) -> tuple[list[str], bool]:
    """Ask for each pod not yet going: (the pods still there and why, whether a budget refused one)."""
    waiting, refused = [], False
    for pod in pending:
        key = f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}"
        if pod["metadata"].get("deletionTimestamp"):
            waiting.append(f"{key} (terminating)")
            continue
        result = _evict(core, pod)
        if result in done and key not in done[result]:
            done[result].append(key)
            report(f"drain {node}: {result} {key}")
        elif result == "blocked":
            waiting.append(f"{key} (a PodDisruptionBudget allows no eviction now)")
            refused = True
    return waiting, refused


def drain_instances(api, instances: list[dict], timeout: float, report: Report) -> list[dict]:
    """Drain the Nodes of these instances, one after the other; instances without a Node are fine."""
    from kubernetes import client

    nodes = json_body(client.CoreV1Api(api).list_node).get("items") or []
    names, missing = nodes_of(instances, nodes)
    for instance_id in missing:
        report(f"drain: instance {instance_id} has no Kubernetes node (nothing to drain)")
    return [drain_node(api, name, timeout, report) for name in names]


def forget_nodes(api, names: list[str], report: Report) -> list[str]:
    """Delete Node objects again once their instances are terminated.

    A kubelet that still runs re-registers its Node after the drain deleted it; k3s on EC2 has no
    cloud controller to remove it later, so a NotReady ghost would stay. Returns the names removed.
    """
    from kubernetes import client

    core, gone = client.CoreV1Api(api), []
    for name in names:
        if delete_node(core, name):
            gone.append(name)
            report(f"{name}: re-registered before its instance stopped; Node deleted again")
    return gone


def delete_node(core, name: str) -> bool:
    """Delete a Node object; False when it was gone already."""
    from kubernetes.client import ApiException

    try:
        core.delete_node(name, **RAW)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return False
    return True


def forget_gone(core, nodes: list[dict], instances: list[dict], ours: Callable[[dict], bool], report,
                why: str = "its instance is gone") -> list[dict]:  # fmt: skip
    """Delete the Nodes `ours` picks whose instance is not among `instances` (k3s on EC2 has no
    cloud controller to remove a Node whose instance went); returns the Nodes that remain."""
    from clusterous_provisioner.kubeobjects import internal_ip

    live = {i.get("PrivateIpAddress") for i in instances}
    kept = []
    for node in nodes:
        address = internal_ip(node)
        if ours(node) and address and address not in live:
            if delete_node(core, node["metadata"]["name"]):
                report(f"{node['metadata']['name']}: {why}; Node deleted")
            continue
        kept.append(node)
    return kept


def uncordon(core, name: str) -> None:
    """Make a node schedulable again (a drain that could not finish keeps its node)."""
    from kubernetes.client import ApiException

    try:
        core.patch_node(name, {"spec": {"unschedulable": False}}, **RAW)
    except ApiException as exc:
        if exc.status != 404:
            raise
