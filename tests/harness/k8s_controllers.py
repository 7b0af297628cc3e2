"""The controllers k3s runs beside its API server, played inside the emulator's event loop.

Tests set the world up (nodes, what an image does when it runs, which images cannot be pulled)
and observe what these produce; they never write an outcome themselves (DESIGN §6). Each
controller follows the upstream one closely enough for what the product relies on:

- Deployment → ReplicaSet (named `<deployment>-<template hash>`) → Pods; rollout status
  (`observedGeneration`, `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`,
  `Available`/`Progressing` conditions) computed from the pods. RollingUpdate scales old
  ReplicaSets down once the new one is available; Recreate waits for the old pods to go.
- DaemonSet → one pod per eligible node (node selector, taints), placed through the scheduler
  with a `metadata.name` node affinity as the upstream controller does.
- Job → a pod per attempt until one succeeds or `backoffLimit` failures; `Complete`/`Failed`;
  past `activeDeadlineSeconds` its pods are deleted and it fails with `DeadlineExceeded`.
- PersistentVolumeClaim → a PersistentVolume through the StorageClass it names (or the default
  class); a missing class leaves the claim Pending with a `ProvisioningFailed` event.
- kube-scheduler: node selector and required node affinity, taints/tolerations (NotReady and
  cordoned nodes carry the taints the node lifecycle controller adds), CPU, memory and pod-count
  requests against allocatable minus what bound pods request, host ports, bound claims. A pod
  that fits nowhere gets `PodScheduled=False`, reason `Unschedulable`, with kube-scheduler's
  message (`0/3 nodes are available: 1 Insufficient cpu, ...`) and a `FailedScheduling` event.
- The kubelet on every Ready node: a bound pod's images are pulled (`ErrImagePull` for an image
  the world lacks), then its containers run — forever unless the test gave the image a
  `program` (an async function returning the exit code); `restartPolicy` decides what an exit
  means (Completed pods, `CrashLoopBackOff`). What a program uses (`World.uses`) meets the pod's
  limits when it ends: memory over `limits.memory` is `OOMKilled` (exit 137); disk over an
  emptyDir's `sizeLimit` evicts the pod (phase Failed, reason `Evicted`, the kubelet's message).
  An image in `World.rate_limited` is refused as Docker Hub refuses past its pull limit (429).
- Garbage collection (background cascade): an object whose owners are all gone is deleted;
  pods bound to a Node that no longer exists are deleted (PodGC).
- k3s's helm-controller: a HelmChart gets its finalizer; deleting it takes `helm_delete_seconds`
  (the helm-delete Job) before the finalizer goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import kmock

if TYPE_CHECKING:
    from tests.harness.k8s import ApiEmulator

DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
REPLICASETS = kmock.resource("apps", "v1", "replicasets")
DAEMONSETS = kmock.resource("apps", "v1", "daemonsets")
JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
NODES = kmock.resource("", "v1", "nodes")
EVENTS = kmock.resource("", "v1", "events")
PVCS = kmock.resource("", "v1", "persistentvolumeclaims")
PVS = kmock.resource("", "v1", "persistentvolumes")
STORAGE_CLASSES = kmock.resource("storage.k8s.io", "v1", "storageclasses")
PDBS = kmock.resource("policy", "v1", "poddisruptionbudgets")
HELMCHARTS = kmock.resource("helm.cattle.io", "v1", "helmcharts")
HELM_FINALIZER = "wrangler.cattle.io/on-helm-chart-remove"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
NOT_READY_TAINT = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
# What the DaemonSet controller adds to every daemon pod (pkg/controller/daemon/util).
DAEMON_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]
# k8s.io/apimachinery/pkg/util/rand.SafeEncodeString: no vowels, no look-alikes.
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
TICK_SECONDS = 0.25

Program = Callable[["ApiEmulator", dict, dict], Awaitable[int]]


@dataclass
class World:
    """What the tests say about the world outside the API: images and what they do."""

    missing_images: set[str] = field(default_factory=set)
    programs: list[tuple[re.Pattern[str], Program]] = field(default_factory=list)
    helm_delete_seconds: float = 0.5
    # A registry of the test's: images named by `prefix` pull only if `exists(image)` says so.
    registry: tuple[str, Callable[[str], bool]] | None = None
    # What a program's container uses, by image regex: {"memory": "3Gi", "disk": "30Gi"}.
    uses: list[tuple[re.Pattern[str], dict[str, str]]] = field(default_factory=list)
    rate_limited: set[str] = field(default_factory=set)  # images Docker Hub refuses with 429

    def use(self, image: str) -> dict[str, str]:
        return next((use for pattern, use in self.uses if pattern.search(image)), {})

    def pullable(self, image: str) -> bool:
        if image in self.rate_limited:
            return False
        if self.registry is not None and image.startswith(self.registry[0]):
            return self.registry[1](image)
        return image not in self.missing_images

    def program(self, image: str) -> Program | None:
        return next((program for pattern, program in self.programs if pattern.search(image)), None)


# ---------------------------------------------------------------------------------------------
# Quantities and small helpers.
# ---------------------------------------------------------------------------------------------

SUFFIXES = {
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(text: Any) -> float:
    """A Kubernetes quantity ("500m", "2", "4Gi", 1.5) as a number of base units."""
    match = re.fullmatch(r"([0-9.]+(?:e[0-9]+)?)([a-zA-Z]*)", str(text).strip())
    if not match or match.group(2) not in SUFFIXES:
        raise ValueError(f"not a quantity: {text!r}")
    return float(match.group(1)) * SUFFIXES[match.group(2)]


def pod_requests(pod: dict) -> dict[str, float]:
    """What the scheduler counts for a pod: containers summed, init containers at their max."""
    spec = pod.get("spec") or {}

    def of(container: dict) -> dict[str, float]:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {k: quantity(v) for k, v in wanted.items() if k in ("cpu", "memory")}

    total: Counter[str] = Counter()
    for container in spec.get("containers") or []:
        total.update(of(container))
    for container in spec.get("initContainers") or []:
        for key, value in of(container).items():
            total[key] = max(total[key], value)
    return dict(total)


def host_ports(pod: dict) -> set[tuple[str, int]]:
    spec = pod.get("spec") or {}
    ports = set()
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                ports.add((port.get("protocol", "TCP"), int(port["hostPort"])))
            elif spec.get("hostNetwork") and port.get("containerPort"):
                ports.add((port.get("protocol", "TCP"), int(port["containerPort"])))
    return ports


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice(SAFE_ALPHABET) for _ in range(length))


def template_hash(template: dict) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:10])


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def condition(status: dict, ctype: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), None)


def is_true(status: dict, ctype: str) -> bool:
    found = condition(status, ctype)
    return bool(found and found.get("status") == "True")


def node_ready(node: dict) -> bool:
    return is_true(node.get("status") or {}, "Ready")


def pod_ready(pod: dict) -> bool:
    return is_true(pod.get("status") or {}, "Ready") and not pod["metadata"].get("deletionTimestamp")


def pod_finished(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def owner_ref(kind: str, api_version: str, obj: dict) -> dict:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controlled_by(obj: dict, owner: dict) -> bool:
    uid = owner["metadata"]["uid"]
    return any(
        ref.get("uid") == uid and ref.get("controller")
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def labels_match(selector: dict | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    return all(expression_matches(e, labels.get(e["key"])) for e in selector.get("matchExpressions") or [])


def expression_matches(expression: dict, value: str | None) -> bool:
    operator, values = expression["operator"], expression.get("values") or []
    if operator == "In":
        return value in values
    if operator == "NotIn":
        return value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and value.lstrip("-").isdigit():
        return int(value) > int(values[0]) if operator == "Gt" else int(value) < int(values[0])
    return False


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        if toleration.get("operator", "Equal") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint["key"]:
                return True
        elif toleration.get("key") == taint["key"] and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def node_taints(node: dict) -> list[dict]:
    """The node's taints plus those the node lifecycle controller adds for NotReady/cordoned."""
    taints = list((node.get("spec") or {}).get("taints") or [])
    if not node_ready(node):
        taints.append(NOT_READY_TAINT)
    if (node.get("spec") or {}).get("unschedulable"):
        taints.append(UNSCHEDULABLE_TAINT)
    return taints


def affinity_matches(pod: dict, node: dict) -> bool:
    """nodeSelector and required node affinity (matchExpressions on labels, matchFields on name)."""
    spec = pod.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms")
    if not terms:
        return True
    fields = {"metadata.name": node["metadata"]["name"]}
    return any(
        all(expression_matches(e, labels.get(e["key"])) for e in term.get("matchExpressions") or [])
        and all(expression_matches(e, fields.get(e["key"])) for e in term.get("matchFields") or [])
        for term in terms
    )


def taint_text(taint: dict) -> str:
    return (
        "{" + f"{taint['key']}: {taint.get('value', '')}" + "}"
        if taint.get("value")
        else "{" + taint["key"] + ": }"
    )


# ---------------------------------------------------------------------------------------------
# The controller loop.
# ---------------------------------------------------------------------------------------------


class Controllers:
    """Runs every controller whenever the store changed (and on a short tick for timers)."""

    def __init__(self, emulator: ApiEmulator, world: World) -> None:
        self.api = emulator
        self.world = world
        self.errors: list[BaseException] = []
        self._running: dict[tuple[str, str], asyncio.Task] = {}  # (pod uid, container) → program
        self._pod_ips = 0
        self._helm_deletes: dict[str, float] = {}  # HelmChart uid → when its deletion was seen

    async def run(self) -> None:
        while not self.api._closing:
            seen = self.api._revision
            await self.reconcile()
            if self.api._revision == seen:
                async with self.api._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.api._changed.wait(), TICK_SECONDS)

    def stop(self) -> None:
        for task in self._running.values():
            task.cancel()

    async def reconcile(self) -> None:
        """One round of every controller; each goes on whatever another one met."""
        for controller in (
            self.garbage_collect,
            self.helm_charts,
            self.deployments,
            self.replica_sets,
            self.daemon_sets,
            self.jobs,
            self.claims,
            self.disruption_budgets,
            self.schedule,
            self.kubelet,
        ):
            try:
                await controller()
            except kmock.KubernetesError:
                pass  # raced with a client (NotFound, Conflict) or refused: the next round sees anew
            except Exception as exc:  # noqa: BLE001 - a harness bug: reported by the fixture
                self.errors.append(exc)

    # -- store access ----------------------------------------------------------------------

    def live(self, resource: kmock.resource, namespace: str | None = None) -> list[dict]:
        if resource not in self.api.resources:
            return []
        return [copy.deepcopy(obj) for obj in self.api._live(resource, namespace)]

    def owned(self, resource: kmock.resource, owner: dict) -> list[dict]:
        return [o for o in self.live(resource, owner["metadata"].get("namespace")) if controlled_by(o, owner)]

    async def create(self, resource: kmock.resource, namespace: str | None, body: dict) -> dict:
        return await self.api.create(resource, namespace, body)

    async def delete(self, resource: kmock.resource, obj: dict) -> None:
        meta = obj["metadata"]
        if self.api._current(resource, meta.get("namespace"), meta["name"]) is not None:
            await self.api.delete(resource, meta.get("namespace"), meta["name"])

    async def write_status(self, resource: kmock.resource, obj: dict, status: dict) -> None:
        """Write status if it changed (a no-op write would still cost nothing, but skip it)."""
        meta = obj["metadata"]
        current = self.api._current(resource, meta.get("namespace"), meta["name"])
        if current is None or current.get("status") == status:
            return
        await self.api.update(resource, meta.get("namespace"), meta["name"], {"status": status}, "status")

    async def write(self, resource: kmock.resource, obj: dict, change: Callable[[dict], None]) -> None:
        meta = obj["metadata"]
        current = self.api._current(resource, meta.get("namespace"), meta["name"])
        if current is None:
            return
        updated = copy.deepcopy(current)
        change(updated)
        updated["metadata"].pop("resourceVersion", None)
        if updated != current:
            await self.api.update(resource, meta.get("namespace"), meta["name"], updated)

    async def event(
        self, obj: dict, kind: str, reason: str, message: str, component: str, warning=True
    ) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        stamp = now()
        await self.create(
            EVENTS,
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": namespace},
                "involvedObject": {
                    "kind": kind,
                    "name": meta["name"],
                    "namespace": meta.get("namespace"),
                    "uid": meta.get("uid"),
                    "apiVersion": obj.get("apiVersion"),
                },
                "reason": reason,
                "message": message,
                "type": "Warning" if warning else "Normal",
                "source": {"component": component},
                "count": 1,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "reportingComponent": component,
            },
        )

    # -- garbage collection ----------------------------------------------------------------

    async def garbage_collect(self) -> None:
        uids = {obj.raw["metadata"].get("uid") for obj in self.api.objects.values() if not obj.deleted}
        nodes = {n["metadata"]["name"] for n in self.live(NODES)}
        for (resource, _, _), stored in list(self.api.objects.items()):
            if stored.deleted:
                continue
            obj = stored.raw
            refs = obj["metadata"].get("ownerReferences") or []
            orphaned = refs and not any(ref.get("uid") in uids for ref in refs)
            lost_node = resource == PODS and (obj.get("spec") or {}).get("nodeName") not in (None, *nodes)
            if orphaned or lost_node:
                await self.delete(resource, obj)

    # -- k3s helm-controller ---------------------------------------------------------------

    async def helm_charts(self) -> None:
        for chart in self.live(HELMCHARTS):
            meta = chart["metadata"]
            finalizers = meta.get("finalizers") or []
            if not meta.get("deletionTimestamp"):
                if HELM_FINALIZER not in finalizers:
                    await self.write(
                        HELMCHARTS,
                        chart,
                        lambda o: o["metadata"].setdefault("finalizers", []).append(HELM_FINALIZER),
                    )
                continue
            deleting = self._helm_deletes.setdefault(meta["uid"], time.monotonic())
            if HELM_FINALIZER in finalizers and time.monotonic() - deleting >= self.world.helm_delete_seconds:

                def release(o: dict) -> None:
                    o["metadata"]["finalizers"] = [
                        f for f in o["metadata"]["finalizers"] if f != HELM_FINALIZER
                    ]

                await self.write(HELMCHARTS, chart, release)

    # -- workloads -------------------------------------------------------------------------

    async def deployments(self) -> None:
        for deployment in self.live(DEPLOYMENTS):
            if deployment["metadata"].get("deletionTimestamp"):
                continue
            spec = deployment["spec"]
            want = spec.get("replicas", 1)
            template = spec.get("template") or {}
            pod_hash = template_hash(template)
            sets = self.owned(REPLICASETS, deployment)
            new = next(
                (rs for rs in sets if rs["metadata"].get("labels", {}).get("pod-template-hash") == pod_hash),
                None,
            )
            if new is None:
                new = await self.create(
                    REPLICASETS, deployment["metadata"]["namespace"], self.replica_set(deployment, pod_hash)
                )
            old = [rs for rs in sets if rs["metadata"]["uid"] != new["metadata"]["uid"]]
            old_pods = sum((rs.get("status") or {}).get("replicas", 0) for rs in old)
            recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
            new_status = new.get("status") or {}
            new_available = new_status.get("availableReplicas", 0)
            new_want = 0 if recreate and old_pods else want
            await self.scale(new, new_want)
            if recreate or new_available >= want:
                for rs in old:
                    await self.scale(rs, 0)
            await self.write_status(DEPLOYMENTS, deployment, self.deployment_status(deployment, new, old))

    def replica_set(self, deployment: dict, pod_hash: str) -> dict:
        template = copy.deepcopy(deployment["spec"].get("template") or {})
        template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = pod_hash
        selector = copy.deepcopy(deployment["spec"].get("selector") or {})
        selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
        return {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{deployment['metadata']['name']}-{pod_hash}",
                "labels": dict(template["metadata"]["labels"]),
                "ownerReferences": [owner_ref("Deployment", "apps/v1", deployment)],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
        }

    async def scale(self, rs: dict, replicas: int) -> None:
        if rs["spec"].get("replicas") != replicas:
            await self.write(REPLICASETS, rs, lambda o: o["spec"].__setitem__("replicas", replicas))

    def deployment_status(self, deployment: dict, new: dict, old: list[dict]) -> dict:
        want = deployment["spec"].get("replicas", 1)
        statuses = [(rs.get("status") or {}) for rs in (new, *old)]
        current = self.api._current(REPLICASETS, new["metadata"]["namespace"], new["metadata"]["name"]) or new
        updated = (current.get("status") or {}).get("replicas", 0)
        replicas = sum(s.get("replicas", 0) for s in statuses)
        ready = sum(s.get("readyReplicas", 0) for s in statuses)
        available = sum(s.get("availableReplicas", 0) for s in statuses)
        surge = (deployment["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        max_unavailable = _fraction(surge.get("maxUnavailable", "25%"), want)
        minimum = want - max_unavailable
        complete = updated == want and replicas == want and available >= want
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": max(want - available, 0),
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if available >= minimum else "False",
                    "reason": "MinimumReplicasAvailable"
                    if available >= minimum
                    else "MinimumReplicasUnavailable",
                    "message": "Deployment has minimum availability."
                    if available >= minimum
                    else "Deployment does not have minimum availability.",
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                    "message": f'ReplicaSet "{new["metadata"]["name"]}" '
                    + ("has successfully progressed." if complete else "is progressing."),
                },
            ],
        }
        for key in (
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
        ):
            if not status[key]:
                del status[key]  # zero counts are omitted, as the API server's JSON omits them
        return _keep_transition_times(deployment.get("status") or {}, status)

    async def replica_sets(self) -> None:
        for rs in self.live(REPLICASETS):
            if rs["metadata"].get("deletionTimestamp"):
                continue
            namespace = rs["metadata"]["namespace"]
            pods = [p for p in self.owned(PODS, rs) if not p["metadata"].get("deletionTimestamp")]
            want = rs["spec"].get("replicas", 1)
            for _ in range(want - len(pods)):
                pods.append(await self.create(PODS, namespace, self.pod_from(rs, "ReplicaSet", "apps/v1")))
            if len(pods) > want:
                # the upstream order: unscheduled, then pending, then not ready, then the newest
                pods.sort(
                    key=lambda p: (
                        bool((p.get("spec") or {}).get("nodeName")),
                        (p.get("status") or {}).get("phase") == "Running",
                        pod_ready(p),
                        _reverse(p["metadata"]["creationTimestamp"]),
                    )
                )
                for pod in pods[: len(pods) - want]:
                    await self.delete(PODS, pod)
                pods = pods[len(pods) - want :]
            ready = sum(1 for p in pods if pod_ready(p))
            status = {"replicas": len(pods), "observedGeneration": rs["metadata"].get("generation", 1)}
            status.update(fullyLabeledReplicas=len(pods), readyReplicas=ready, availableReplicas=ready)
            await self.write_status(
                REPLICASETS, rs, {k: v for k, v in status.items() if v or k == "replicas"}
            )

    def pod_from(self, owner: dict, kind: str, api_version: str, name: str | None = None) -> dict:
        template = copy.deepcopy(owner["spec"].get("template") or {})
        meta = template.get("metadata") or {}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                **({"name": name} if name else {"generateName": f"{owner['metadata']['name']}-"}),
                "labels": meta.get("labels") or {},
                "annotations": meta.get("annotations") or {},
                "ownerReferences": [owner_ref(kind, api_version, owner)],
            },
            "spec": template.get("spec") or {},
        }

    async def daemon_sets(self) -> None:
        nodes = self.live(NODES)
        for ds in self.live(DAEMONSETS):
            if ds["metadata"].get("deletionTimestamp"):
                continue
            namespace = ds["metadata"]["namespace"]
            pods = [p for p in self.owned(PODS, ds) if not p["metadata"].get("deletionTimestamp")]
            probe = self.pod_from(ds, "DaemonSet", "apps/v1")
            tolerations = (probe["spec"].get("tolerations") or []) + DAEMON_TOLERATIONS
            eligible = [
                n
                for n in nodes
                if affinity_matches(probe, n)
                and all(
                    tolerates(tolerations, t) for t in node_taints(n) if t.get("effect") != "PreferNoSchedule"
                )
            ]
            by_node = {_daemon_node(p): p for p in pods}
            for node in eligible:
                name = node["metadata"]["name"]
                if name not in by_node:
                    pod = self.pod_from(ds, "DaemonSet", "apps/v1")
                    pod["spec"]["tolerations"] = tolerations
                    pod["spec"]["affinity"] = {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchFields": [
                                            {"key": "metadata.name", "operator": "In", "values": [name]}
                                        ]
                                    }
                                ]
                            }
                        }
                    }
                    by_node[name] = await self.create(PODS, namespace, pod)
            wanted = {n["metadata"]["name"] for n in eligible}
            for node_name, pod in list(by_node.items()):
                if node_name not in wanted:
                    await self.delete(PODS, pod)
                    del by_node[node_name]
            scheduled = sum(1 for p in by_node.values() if (p.get("spec") or {}).get("nodeName"))
            ready = sum(1 for p in by_node.values() if pod_ready(p))
            status = {
                "observedGeneration": ds["metadata"].get("generation", 1),
                "desiredNumberScheduled": len(wanted),
                "currentNumberScheduled": scheduled,
                "updatedNumberScheduled": scheduled,
                "numberReady": ready,
                "numberAvailable": ready,
                "numberMisscheduled": 0,
            }
            if len(wanted) - ready:
                status["numberUnavailable"] = len(wanted) - ready
            await self.write_status(DAEMONSETS, ds, status)

    async def jobs(self) -> None:
        for job in self.live(JOBS):
            if job["metadata"].get("deletionTimestamp"):
                continue
            status = copy.deepcopy(job.get("status") or {})
            if is_true(status, "Complete") or is_true(status, "Failed"):
                continue
            pods = self.owned(PODS, job)
            succeeded = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded")
            failed = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
            active = [p for p in pods if not pod_finished(p) and not p["metadata"].get("deletionTimestamp")]
            status.setdefault("startTime", now())
            limit = job["spec"].get("backoffLimit", 6)
            deadline = job["spec"].get("activeDeadlineSeconds")
            started = time.mktime(time.strptime(status["startTime"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
            if succeeded >= job["spec"].get("completions", 1):
                status["completionTime"] = now()
                status["conditions"] = [
                    {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
                    {"type": "Complete", "status": "True", "reason": "CompletionsReached"},
                ]
            elif failed > limit:
                status["conditions"] = [
                    {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    },
                ]
            elif deadline is not None and time.time() - started > deadline:
                for pod in active:  # the Job controller deletes what still runs
                    await self.delete(PODS, pod)
                active = []
                status["conditions"] = [
                    {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"},
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                    },
                ]
            elif not active:
                pod = self.pod_from(job, "Job", "batch/v1")
                name, uid = job["metadata"]["name"], job["metadata"]["uid"]
                pod["metadata"]["labels"].update(
                    {"job-name": name, "batch.kubernetes.io/job-name": name, "controller-uid": uid}
                )
                active.append(await self.create(PODS, job["metadata"]["namespace"], pod))
            counts = {
                "active": len(active) if not status.get("conditions") else 0,
                "succeeded": succeeded,
                "failed": failed,
            }
            status.update({k: v for k, v in counts.items() if v})
            for key in [k for k, v in counts.items() if not v]:
                status.pop(key, None)
            status["ready"] = sum(1 for p in active if pod_ready(p))
            await self.write_status(JOBS, job, status)

    async def claims(self) -> None:
        classes = {c["metadata"]["name"]: c for c in self.live(STORAGE_CLASSES)}
        default = next(
            (
                n
                for n, c in classes.items()
                if (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS) == "true"
            ),
            None,
        )
        for claim in self.live(PVCS):
            if (claim.get("status") or {}).get("phase") == "Bound":
                continue
            name = claim["spec"].get("storageClassName") or default
            storage_class = classes.get(name or "")
            if storage_class is None:
                status = {"phase": "Pending"}
                if (claim.get("status") or {}) != status:
                    why = f'storageclass.storage.k8s.io "{name}" not found' if name else "no storage class"
                    await self.event(
                        claim,
                        "PersistentVolumeClaim",
                        "ProvisioningFailed",
                        why,
                        "persistentvolume-controller",
                    )
                await self.write_status(PVCS, claim, status)
                continue
            volume = f"pvc-{claim['metadata']['uid']}"
            size = ((claim["spec"].get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
            if self.api._current(PVS, None, volume) is None:
                await self.create(
                    PVS,
                    None,
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolume",
                        "metadata": {
                            "name": volume,
                            "annotations": {
                                "pv.kubernetes.io/provisioned-by": storage_class.get("provisioner", "")
                            },
                        },
                        "spec": {
                            "capacity": {"storage": size},
                            "accessModes": claim["spec"].get("accessModes") or ["ReadWriteOnce"],
                            "storageClassName": name,
                            "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy", "Delete"),
                            "claimRef": {
                                "kind": "PersistentVolumeClaim",
                                "namespace": claim["metadata"]["namespace"],
                                "name": claim["metadata"]["name"],
                                "uid": claim["metadata"]["uid"],
                            },
                            "csi": {"driver": storage_class.get("provisioner", ""), "volumeHandle": volume},
                        },
                    },
                )
            await self.write(PVCS, claim, lambda o, v=volume: o["spec"].__setitem__("volumeName", v))
            current = self.api._current(PVCS, claim["metadata"]["namespace"], claim["metadata"]["name"])
            if current is not None:
                modes = claim["spec"].get("accessModes") or ["ReadWriteOnce"]
                status = {"phase": "Bound", "accessModes": modes, "capacity": {"storage": size}}
                await self.write_status(PVCS, current, status)

    async def disruption_budgets(self) -> None:
        """The disruption controller: how many pods a PodDisruptionBudget lets go right now."""
        for budget in self.live(PDBS):
            namespace = budget["metadata"]["namespace"]
            selector = budget["spec"].get("selector")
            pods = [
                p
                for p in self.live(PODS, namespace)
                if selector is not None
                and labels_match(selector, p["metadata"].get("labels") or {})
                and not p["metadata"].get("deletionTimestamp")
            ]
            expected = self.expected_pods(pods)
            healthy = sum(1 for p in pods if pod_ready(p))
            spec = budget["spec"]
            if "minAvailable" in spec:
                desired = _count(spec["minAvailable"], expected, round_up=True)
            else:
                desired = expected - _count(spec.get("maxUnavailable", 0), expected, round_up=True)
            allowed = max(healthy - desired, 0)
            status = {
                "observedGeneration": budget["metadata"].get("generation", 1),
                "currentHealthy": healthy,
                "desiredHealthy": desired,
                "expectedPods": expected,
                "disruptionsAllowed": allowed,
                "conditions": [
                    {
                        "type": "DisruptionAllowed",
                        "status": "True" if allowed else "False",
                        "reason": "SufficientPods" if allowed else "InsufficientPods",
                        "message": "",
                    }
                ],
            }
            await self.write_status(PDBS, budget, _keep_transition_times(budget.get("status") or {}, status))

    def expected_pods(self, pods: list[dict]) -> int:
        """As the disruption controller counts: the scale of each pod's controller, else the pods."""
        owners: dict[str, int] = {}
        loose = 0
        for pod in pods:
            ref = next((r for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
            owner = None
            if ref and ref.get("kind") == "ReplicaSet":
                owner = self.api._current(REPLICASETS, pod["metadata"]["namespace"], ref["name"])
            if owner is None:
                loose += 1
            else:
                owners[owner["metadata"]["uid"]] = owner["spec"].get("replicas", 1)
        return loose + sum(owners.values())

    # -- kube-scheduler ----------------------------------------------------------------------

    async def schedule(self) -> None:
        nodes = sorted(self.live(NODES), key=lambda n: n["metadata"]["name"])
        bound = [p for p in self.live(PODS) if (p.get("spec") or {}).get("nodeName") and not pod_finished(p)]
        for pod in sorted(self.live(PODS), key=lambda p: int(p["metadata"]["resourceVersion"])):
            spec = pod.get("spec") or {}
            if spec.get("nodeName") or pod["metadata"].get("deletionTimestamp") or pod_finished(pod):
                continue
            node, why = self.place(pod, nodes, bound)
            if node is None:
                await self.unschedulable(pod, why)
                continue
            name = node["metadata"]["name"]
            await self.write(PODS, pod, lambda o, n=name: o["spec"].__setitem__("nodeName", n))
            pod = self.api._current(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"]) or pod
            bound.append(pod)
            scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}
            await self.write_status(PODS, pod, {"phase": "Pending", "conditions": [scheduled]})
            await self.event(
                pod,
                "Pod",
                "Scheduled",
                f"Successfully assigned {pod['metadata']['namespace']}/{pod['metadata']['name']} to {name}",
                "default-scheduler",
                warning=False,
            )

    def place(self, pod: dict, nodes: list[dict], bound: list[dict]) -> tuple[dict | None, str]:
        """The node kube-scheduler would pick (least allocated first), or why none fits."""
        claims = self.unbound_claims(pod)
        if claims:
            return (
                None,
                f"0/{len(nodes)} nodes are available: {claims}. preemption: 0/{len(nodes)} nodes are available: {len(nodes)} Preemption is not helpful for scheduling.",
            )
        wanted = pod_requests(pod)
        ports = host_ports(pod)
        tolerations = (pod.get("spec") or {}).get("tolerations") or []
        reasons: Counter[str] = Counter()
        fits: list[tuple[float, str, dict]] = []
        for node in nodes:
            name = node["metadata"]["name"]
            on_node = [p for p in bound if p["spec"]["nodeName"] == name]
            # kube-scheduler's filter order; a node reports the first filter it fails
            if (node.get("spec") or {}).get("unschedulable") and not tolerates(
                tolerations, UNSCHEDULABLE_TAINT
            ):
                reasons["node(s) were unschedulable"] += 1
                continue
            untolerated = [
                t
                for t in node_taints(node)
                if t is not UNSCHEDULABLE_TAINT
                and t.get("effect") in ("NoSchedule", "NoExecute")
                and not tolerates(tolerations, t)
            ]
            if untolerated:
                reasons[f"node(s) had untolerated taint {taint_text(untolerated[0])}"] += 1
                continue
            if not affinity_matches(pod, node):
                reasons["node(s) didn't match Pod's node affinity/selector"] += 1
                continue
            if ports & set().union(*(host_ports(p) for p in on_node)):
                reasons["node(s) didn't have free ports for the requested pod ports"] += 1
                continue
            allocatable = (node.get("status") or {}).get("allocatable") or {}
            used: Counter[str] = Counter()
            for other in on_node:
                used.update(pod_requests(other))
            short = [
                f"Insufficient {r}"
                for r in ("cpu", "memory")
                if wanted.get(r, 0) and wanted[r] > quantity(allocatable.get(r, 0)) - used[r] + 1e-9
            ]
            if len(on_node) + 1 > quantity(allocatable.get("pods", 110)):
                short.append("Too many pods")
            if short:
                reasons.update(short)
                continue
            cpu = quantity(allocatable.get("cpu", 0)) or 1
            fits.append(((used["cpu"] + wanted.get("cpu", 0)) / cpu, name, node))
        if fits:
            return min(fits, key=lambda f: f[:2])[2], ""
        listed = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
        total = len(nodes)
        tail = (
            f" preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
        )
        return None, f"0/{total} nodes are available" + (f": {listed}." if listed else ".") + tail

    def unbound_claims(self, pod: dict) -> str:
        namespace = pod["metadata"]["namespace"]
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            claim_name = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim_name:
                continue
            claim = self.api._current(PVCS, namespace, claim_name)
            if claim is None:
                return f'persistentvolumeclaim "{claim_name}" not found'
            if (claim.get("status") or {}).get("phase") != "Bound":
                return "pod has unbound immediate PersistentVolumeClaims"
        return ""

    async def unschedulable(self, pod: dict, message: str) -> None:
        status = copy.deepcopy(pod.get("status") or {})
        old = condition(status, "PodScheduled") or {}
        if old.get("message") == message and old.get("status") == "False":
            return
        status["phase"] = "Pending"
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": now(),
            }
        ]
        await self.write_status(PODS, pod, status)
        await self.event(pod, "Pod", "FailedScheduling", message, "default-scheduler")

    # -- the kubelet -----------------------------------------------------------------------

    async def kubelet(self) -> None:
        nodes = {n["metadata"]["name"]: n for n in self.live(NODES)}
        for pod in self.live(PODS):
            node = nodes.get((pod.get("spec") or {}).get("nodeName") or "")
            if node is None or pod["metadata"].get("deletionTimestamp"):
                continue
            status = pod.get("status") or {}
            waiting = [
                (c.get("state") or {}).get("waiting", {}).get("reason")
                for c in status.get("containerStatuses") or []
            ]
            pulling = "ErrImagePull" in waiting or "ImagePullBackOff" in waiting
            if status.get("phase") not in (None, "Pending") or (
                status.get("containerStatuses") and not pulling
            ):
                continue
            if pulling and not all(
                self.world.pullable(c.get("image", "")) for c in pod["spec"]["containers"]
            ):
                continue  # still missing: the kubelet keeps backing off
            if not node_ready(node):
                continue
            await self.start_pod(pod, node)

    async def start_pod(self, pod: dict, node: dict) -> None:
        containers = pod["spec"].get("containers") or []
        missing = [c for c in containers if not self.world.pullable(c.get("image", ""))]
        address = next(
            (
                a["address"]
                for a in (node.get("status") or {}).get("addresses") or []
                if a["type"] == "InternalIP"
            ),
            "10.0.1.10",
        )
        base = {
            "hostIP": address,
            "startTime": now(),
            "qosClass": "Burstable" if pod_requests(pod) else "BestEffort",
        }
        stamp = now()
        if missing:
            statuses = [self.container_status(c, missing_image=c in missing) for c in containers]
            status = {
                **base,
                "phase": "Pending",
                "conditions": self.pod_conditions(False, stamp),
                "containerStatuses": statuses,
            }
            await self.write_status(PODS, pod, status)
            for container in missing:
                await self.event(
                    pod,
                    "Pod",
                    "Failed",
                    _pull_failure(container["image"], container["image"] in self.world.rate_limited),
                    "kubelet",
                )
            return
        self._pod_ips += 1
        pod_ip = (
            address
            if pod["spec"].get("hostNetwork")
            else f"10.42.{self._pod_ips // 250}.{self._pod_ips % 250 + 2}"
        )
        status = {
            **base,
            "phase": "Running",
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "conditions": self.pod_conditions(True, stamp),
            "containerStatuses": [self.container_status(c) for c in containers],
        }
        await self.write_status(PODS, pod, status)
        for container in containers:
            program = self.world.program(container.get("image", ""))
            if program is not None:
                key = (pod["metadata"]["uid"], container["name"])
                self._running[key] = asyncio.ensure_future(self.run_program(program, pod, container))

    def pod_conditions(self, ready: bool, stamp: str) -> list[dict]:
        flag = "True" if ready else "False"
        extra = {} if ready else {"reason": "ContainersNotReady"}
        return [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": stamp},
            {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
            {"type": "Ready", "status": flag, "lastTransitionTime": stamp, **extra},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": stamp, **extra},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
        ]

    def container_status(self, container: dict, missing_image: bool = False, **state: Any) -> dict:
        image = container.get("image", "")
        if missing_image:
            message = _pull_failure(image, image in self.world.rate_limited)
            state = {"waiting": {"reason": "ErrImagePull", "message": message}}
        elif not state:
            state = {"running": {"startedAt": now()}}
        running = "running" in state
        return {
            "name": container["name"],
            "image": image,
            "imageID": ""
            if missing_image
            else f"{image.split(':')[0]}@sha256:{hashlib.sha256(image.encode()).hexdigest()}",
            "ready": running,
            "started": running,
            "restartCount": 0,
            "state": state,
        }

    async def run_program(self, program: Program, pod: dict, container: dict) -> None:
        """Run what the test said the image does; its exit code ends the container."""
        try:
            code = await program(self.api, copy.deepcopy(pod), container)
        except asyncio.CancelledError:
            raise
        except kmock.KubernetesError as exc:
            meta = pod["metadata"]
            current = self.api._current(PODS, meta["namespace"], meta["name"])
            if exc.status != 404 or (current is not None and current["metadata"]["uid"] == meta["uid"]):
                self.errors.append(exc)  # not its pod deleted under it (a Job's deadline, a drain)
            code = 1
        except Exception as exc:  # noqa: BLE001 - a failing program is a crashed container
            self.errors.append(exc)
            code = 1
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        current = self.api._current(PODS, namespace, name)
        if current is None or current["metadata"]["uid"] != pod["metadata"]["uid"]:
            return
        status = copy.deepcopy(current.get("status") or {})
        use = self.world.use(container.get("image", ""))
        if evicted := _evicted_by(current, use):
            status.update(phase="Failed", reason="Evicted", message=evicted)
            for entry in status.get("containerStatuses") or []:
                entry.update(ready=False, started=False)
                entry["state"] = {"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now()}}
            await self.write_status(PODS, current, status)
            await self.event(current, "Pod", "Evicted", evicted, "kubelet")
            return
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        oom = bool(limit and use.get("memory") and quantity(use["memory"]) > quantity(limit))
        ended = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": now()}
        if oom:
            ended = {"exitCode": 137, "reason": "OOMKilled", "finishedAt": now()}
        policy = current["spec"].get("restartPolicy", "Always")
        for entry in status.get("containerStatuses") or []:
            if entry["name"] == container["name"]:
                entry.update(ready=False, started=False)
                if policy == "Always" or (policy == "OnFailure" and code):
                    entry["restartCount"] = entry.get("restartCount", 0) + 1
                    entry["lastState"] = {"terminated": ended}
                    entry["state"] = {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": "back-off restarting failed container",
                        }
                    }
                else:
                    entry["state"] = {"terminated": ended}
        entries = status.get("containerStatuses") or []
        if all("terminated" in e["state"] for e in entries):
            failed = any(e["state"]["terminated"]["exitCode"] for e in entries)
            status["phase"] = "Failed" if failed else "Succeeded"
        why = "PodCompleted" if status.get("phase") in ("Succeeded", "Failed") else "ContainersNotReady"
        for entry in status.get("conditions") or []:
            if entry["type"] in ("Ready", "ContainersReady"):
                entry.update(status="False", reason=why, lastTransitionTime=now())
        await self.write_status(PODS, current, status)


def _evicted_by(pod: dict, use: dict[str, str]) -> str:
    """The kubelet's eviction message when disk use exceeds an emptyDir's sizeLimit, else ''."""
    if not use.get("disk"):
        return ""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        limit = (volume.get("emptyDir") or {}).get("sizeLimit")
        if limit and quantity(use["disk"]) > quantity(limit):
            return f'Usage of EmptyDir volume "{volume["name"]}" exceeds the limit "{limit}". '
    return ""


def _pull_failure(image: str, rate_limited: bool = False) -> str:
    reference = image if "/" in image.split(":")[0] else f"docker.io/library/{image}"
    if rate_limited:  # containerd's words for Docker Hub's 429
        repository = image.split("@")[0].split(":")[0]
        repository = repository if "/" in repository else f"library/{repository}"
        return (
            f'Failed to pull image "{image}": failed to pull and unpack image "{reference}": failed to '
            f"copy: httpReadSeeker: failed open: unexpected status code https://registry-1.docker.io/v2/"
            f"{repository}/manifests/{image.rpartition('@')[2] or 'latest'}: 429 Too Many "
            "Requests - Server message: toomanyrequests: You have reached your unauthenticated pull rate "
            "limit. https://www.docker.com/increase-rate-limit"
        )
    return (
        f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack image '
        f'"{reference}": failed to resolve reference "{reference}": {reference}: not found'
    )


def _daemon_node(pod: dict) -> str:
    """The node a daemon pod is for: bound, or named by its metadata.name affinity."""
    if (pod.get("spec") or {}).get("nodeName"):
        return pod["spec"]["nodeName"]
    terms = (
        ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    for term in terms:
        for expression in term.get("matchFields") or []:
            if expression["key"] == "metadata.name":
                return expression["values"][0]
    return ""


def _fraction(value: Any, total: int) -> int:
    """maxUnavailable as a count: "25%" of total rounded down, as the Deployment controller does."""
    if isinstance(value, str) and value.endswith("%"):
        return int(total * int(value[:-1]) / 100)
    return int(value)


def _count(value: Any, total: int, round_up: bool) -> int:
    """An int-or-percent of a PodDisruptionBudget as a count of pods."""
    if isinstance(value, str) and value.endswith("%"):
        share = total * int(value[:-1]) / 100
        return int(-(-share // 1)) if round_up else int(share)
    return int(value)


def _reverse(stamp: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in stamp)


def _keep_transition_times(old: dict, new: dict) -> dict:
    """Conditions keep their lastTransitionTime unless their status changed."""
    for entry in new.get("conditions") or []:
        before = condition(old, entry["type"])
        entry["lastTransitionTime"] = (
            before["lastTransitionTime"]
            if before and before.get("status") == entry["status"] and before.get("lastTransitionTime")
            else now()
        )
        entry["lastUpdateTime"] = entry["lastTransitionTime"]
    return new
