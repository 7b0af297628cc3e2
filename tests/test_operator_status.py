"""Status: the phase machine and conditions a person can act on, from observed objects."""

from __future__ import annotations

import pytest

from clusterous_operator.builders import APP_LABEL, COMPONENT_LABEL, SPEC_HASH_ANNOTATION
from clusterous_operator.reconcile import decide, status_changed
from tests.test_operator_builders import node

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def capp(*components: dict, generation: int = 1, status: dict | None = None) -> dict:
    body = {
        "apiVersion": "clusterous.io/v1alpha1",
        "kind": "ClusterApp",
        "metadata": {"name": "sim", "namespace": "default", "generation": generation},
        "spec": {"components": list(components)},
    }
    if status is not None:
        body["status"] = status
    return body


MASTER = {"name": "master", "group": "master", "image": "registry:5000/sim", "cpu": "1", "ports": [8888]}
CRUNCH = {"name": "crunch", "group": "worker", "image": "sim", "replicas": 8, "cpu": "0.5"}
ENGINE = {
    "name": "engine",
    "group": "worker",
    "image": "sim",
    "replicas": "auto",
    "cpu": "1",
    "dependsOn": ["master"],
}
NODES = [node("m1", "master"), node("w1", "worker", "2"), node("w2", "worker", "500m")]


def running_deployments(body: dict, nodes=NODES, ready: dict | None = None, children=None) -> list[dict]:
    """The Deployments the operator would have made (or `children`), as a controller reports
    them when `ready[component]` replicas (default: all) are ready."""
    deployments = []
    for child in children if children is not None else decide(body, nodes, now=NOW).children:
        if child["kind"] != "Deployment":
            continue
        component = child["metadata"]["labels"][COMPONENT_LABEL]
        replicas = child["spec"]["replicas"]
        deployments.append(
            {
                **child,
                "metadata": {**child["metadata"], "generation": 1},
                "status": {
                    "observedGeneration": 1,
                    "replicas": replicas,
                    "readyReplicas": (ready or {}).get(component, replicas),
                },
            }
        )
    return deployments


def pod(component: str, phase: str = "Running", *, unschedulable=False, waiting=None, node_name=None) -> dict:
    status: dict = {"phase": phase}
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]
    if waiting:
        status["containerStatuses"] = [{"name": component, "state": {"waiting": {"reason": waiting}}}]
    return {
        "metadata": {"namespace": "default", "labels": {APP_LABEL: "sim", COMPONENT_LABEL: component}},
        "spec": {"nodeName": node_name, "containers": [{"resources": {"requests": {"cpu": "500m"}}}]},
        "status": status,
    }


def condition(status: dict, kind: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_running_when_every_replica_is_ready() -> None:
    body = capp(MASTER)
    status = decide(body, NODES, deployments=running_deployments(body), now=NOW).status
    assert status["phase"] == "Running"
    assert status["ready"] == "1/1" and status["observedGeneration"] == 1
    assert condition(status, "Ready")["reason"] == "AllReplicasReady"


def test_never_running_while_a_pod_is_pending() -> None:
    body = capp(MASTER)
    status = decide(body, NODES, [pod("master", "Pending")], running_deployments(body), now=NOW).status
    assert status["phase"] != "Running"


def test_unplaceable_fixed_replicas_say_how_many_and_what_to_run() -> None:
    body = capp(CRUNCH)
    status = decide(body, NODES, deployments=running_deployments(body, ready={"crunch": 5}), now=NOW).status
    # 2 CPUs + 0.5 CPU of workers hold 5 replicas of 0.5 CPU: 3 wait.
    assert status["phase"] == "Degraded"
    scheduled = condition(status, "Scheduled")
    assert scheduled["status"] == "False" and scheduled["reason"] == "InsufficientCPU"
    assert scheduled["message"].startswith(
        "3 of 8 crunch replicas Pending: no worker node has 0.5 CPU and 2Gi memory free"
    )
    assert "`clusterous-k8s scale worker 3`" in scheduled["message"]  # one more 2-CPU node holds 3
    assert status["message"] == scheduled["message"]


def test_pending_when_nothing_is_ready_and_pods_cannot_be_scheduled() -> None:
    body = capp(MASTER)
    deployments = running_deployments(body, ready={"master": 0})
    status = decide(body, NODES, [pod("master", "Pending", unschedulable=True)], deployments, now=NOW).status
    assert status["phase"] == "Pending"
    assert "1 of 1 master replicas Pending" in condition(status, "Scheduled")["message"]


def test_auto_replicas_without_room_tell_the_user_to_scale() -> None:
    body = capp({**ENGINE, "dependsOn": []})
    busy = pod("x", node_name="w1")
    busy["metadata"]["labels"][APP_LABEL] = "other-app"
    busy["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "1500m"
    status = decide(body, [node("m1", "master"), node("w1", "worker", "2")], [busy], now=NOW).status
    assert status["phase"] == "Pending"
    assert (
        "0 engine replicas: no worker node has 1 CPU free — `clusterous-k8s scale worker 2`"
        in status["message"]
    )


def test_a_cpu_larger_than_any_node_fails_naming_the_field_and_builds_nothing() -> None:
    body = capp({**ENGINE, "dependsOn": [], "cpu": "4"})
    decision = decide(body, NODES, now=NOW)
    assert decision.status["phase"] == "Failed" and decision.children == []
    assert decision.status["message"].startswith(
        "spec.components[0].cpu: expected at most 2, the most CPU free on a worker node"
    )


def system_pod(node_name: str, cpu: str, memory: str | None = None) -> dict:
    """A pod of no application (a DaemonSet's, CoreDNS)."""
    requests = {"cpu": cpu, **({"memory": memory} if memory else {})}
    return {
        "metadata": {"namespace": "kube-system", "labels": {"app": "node-agent"}},
        "spec": {"nodeName": node_name, "containers": [{"resources": {"requests": requests}}]},
        "status": {"phase": "Running"},
    }


def test_a_cpu_that_fits_only_beside_no_system_pod_fails_but_other_apps_do_not_count() -> None:
    """The check counts the cluster's own pods (they stay), not other apps' (they quit)."""
    nodes = [node("m1", "master"), node("w1", "worker", "2")]
    body = capp({**ENGINE, "dependsOn": [], "cpu": "1900m", "replicas": 1})
    failed = decide(body, nodes, [system_pod("w1", "250m")], now=NOW).status
    assert failed["message"].startswith("spec.components[0].cpu: expected at most 1750m"), failed["message"]
    other = pod("x", node_name="w1")
    other["metadata"]["labels"][APP_LABEL] = "other-app"
    pending = decide(body, nodes, [other], now=NOW).status
    assert pending["phase"] == "Pending" and "scale worker 2" in pending["message"]


def test_the_scale_hint_counts_what_a_new_node_holds_beside_the_system_pods() -> None:
    """2-CPU workers with a 500m agent on each hold one 1-CPU replica a node, not two: 3
    replicas more than the 1 placed need 3 more nodes (the hint said 2 with bare nodes)."""
    nodes = [node("m1", "master"), node("w1", "worker", "2")]
    body = capp({**ENGINE, "dependsOn": [], "replicas": 4})
    status = decide(body, nodes, [system_pod("w1", "500m")], now=NOW).status
    assert "3 of 4 engine replicas Pending" in status["message"], status["message"]
    assert "`clusterous-k8s scale worker 4`" in status["message"]


def test_a_group_with_no_usable_node_says_so() -> None:
    body = capp(MASTER)
    status = decide(body, [node("m1", "master", ready=False), node("w1", "worker")], now=NOW).status
    assert status["phase"] == "Pending"
    assert condition(status, "Scheduled")["reason"] == "NoNodes"
    assert "no Ready, schedulable master node — `clusterous-k8s scale master 1`" in status["message"]


def test_dependents_wait_and_the_status_says_for_what() -> None:
    body = capp(MASTER, ENGINE)
    decision = decide(body, NODES, deployments=running_deployments(body, ready={"master": 0})[:1], now=NOW)
    assert decision.waiting == {"engine": ("master",)}
    engine = next(c for c in decision.status["components"] if c["name"] == "engine")
    assert engine["state"] == "Waiting" and engine["message"] == "engine waiting for master (0/1 ready)"
    assert condition(decision.status, "Ready")["reason"] in ("ReplicasNotReady", "WaitingForDependency")
    assert decision.status["phase"] == "Deploying"
    assert [c["kind"] for c in decision.children if c["metadata"]["name"] == "sim-engine"] == ["Service"]


def test_dependents_start_once_dependencies_are_ready_and_are_not_stopped_again() -> None:
    body = capp(MASTER, ENGINE)
    master_ready = running_deployments(body)[:1]
    started = decide(body, NODES, deployments=master_ready, now=NOW)
    assert started.waiting == {}
    engine = next(c for c in started.children if c["metadata"]["name"] == "sim-engine")
    assert engine["spec"]["replicas"] == 2
    both = running_deployments(body, children=started.children, ready={"master": 0})  # master restarts
    assert decide(body, NODES, deployments=both, now=NOW).waiting == {}


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        ("ImagePullBackOff", "clusterous-k8s build-image DIR sim"),
        ("CrashLoopBackOff", "clusterous-k8s logs master"),
    ],
)
def test_failing_containers_name_the_reason_and_the_next_step(reason, hint) -> None:
    body = capp(MASTER)
    deployments = running_deployments(body, ready={"master": 0})
    status = decide(body, NODES, [pod("master", waiting=reason)], deployments, now=NOW).status
    assert status["phase"] == "Pending"
    assert reason in status["message"] and hint in status["message"]
    assert condition(status, "Ready")["reason"] == "ContainersFailing"


def test_a_public_image_that_cannot_be_pulled_names_where_it_comes_from() -> None:
    body = capp({**MASTER, "image": "ubuntu:nosuchtag"})
    deployments = running_deployments(body, ready={"master": 0})
    status = decide(body, NODES, [pod("master", waiting="ErrImagePull")], deployments, now=NOW).status
    assert (
        "can docker.io/library/ubuntu:nosuchtag be pulled? A short name is Docker Hub's" in status["message"]
    )
    assert "build-image" not in status["message"]


def test_degraded_when_replicas_are_lost_after_running() -> None:
    body = capp(MASTER)
    running = decide(body, NODES, deployments=running_deployments(body), now=NOW).status
    later = capp(MASTER, status=running)
    status = decide(
        later, NODES, deployments=running_deployments(later, ready={"master": 0}), now=LATER
    ).status
    assert status["phase"] == "Degraded"


def test_deploying_not_degraded_after_a_spec_change() -> None:
    body = capp(MASTER)
    running = decide(body, NODES, deployments=running_deployments(body), now=NOW).status
    changed = capp({**MASTER, "image": "ghcr.io/lab/sim:2"}, generation=2, status=running)
    status = decide(changed, NODES, deployments=running_deployments(body), now=LATER).status
    assert status["phase"] == "Deploying"  # the Deployment still has the old spec
    assert status["observedGeneration"] == 2


def test_an_outdated_deployment_has_no_ready_replicas() -> None:
    body = capp(MASTER)
    deployments = running_deployments(body)
    deployments[0]["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: "old"}
    assert decide(body, NODES, deployments=deployments, now=NOW).status["ready"] == "0/1"


def test_an_invalid_spec_fails_with_the_field_and_builds_nothing() -> None:
    body = capp({**ENGINE, "dependsOn": ["nobody"]})
    decision = decide(body, NODES, now=NOW)
    assert decision.children == []
    assert decision.status["phase"] == "Failed"
    valid = condition(decision.status, "SpecValid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert "spec.components[0].dependsOn[0]" in valid["message"]


def test_unchanged_status_keeps_transition_times_and_needs_no_write() -> None:
    body = capp(MASTER)
    first = decide(body, NODES, deployments=running_deployments(body), now=NOW).status
    again = decide(capp(MASTER, status=first), NODES, deployments=running_deployments(body), now=LATER).status
    assert again == first
    assert not status_changed(first, again)
    lost = decide(
        capp(MASTER, status=first),
        NODES,
        deployments=running_deployments(body, ready={"master": 0}),
        now=LATER,
    )
    assert condition(lost.status, "Ready")["lastTransitionTime"] == LATER
    assert condition(lost.status, "SpecValid")["lastTransitionTime"] == NOW
    assert status_changed(first, lost.status)


def test_cpu_requested_by_other_apps_pods_reduces_auto_replicas() -> None:
    body = capp({**ENGINE, "dependsOn": []})
    other = pod("x", node_name="w1")
    other["metadata"]["labels"][APP_LABEL] = "other-app"
    mine = pod("engine", node_name="w1")
    alone = decide(body, NODES, [mine], now=NOW).status
    shared = decide(body, NODES, [mine, other], now=NOW).status
    assert alone["desiredReplicas"] == 2 and shared["desiredReplicas"] == 1


def test_memory_follows_the_cpu_share_of_what_other_pods_leave_and_is_reported() -> None:
    body = capp({**ENGINE, "dependsOn": []})
    other = pod("x", node_name="w1")
    other["metadata"]["labels"][APP_LABEL] = "other-app"
    other["spec"]["containers"] = [{"name": "x", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]
    decision = decide(body, [node("w1", "worker", "2")], [other], now=NOW)
    engine = decision.status["components"][0]
    # 1 CPU and 6Gi left beside the other pod: one 1-CPU engine gets all 6Gi.
    assert engine["desired"] == 1 and engine["cpu"] == "1" and engine["memory"] == "6Gi"
    deployment = next(o for o in decision.children if o["kind"] == "Deployment")
    requests = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests == {"cpu": "1", "memory": "6Gi"}


def test_memory_that_fits_no_node_fails_with_the_field_named() -> None:
    body = capp({**ENGINE, "dependsOn": [], "memory": "9Gi"})
    decision = decide(body, NODES, now=NOW)
    assert decision.status["phase"] == "Failed" and decision.children == []
    assert decision.status["message"].startswith("spec.components[0].memory: expected at most 8Gi")
    assert "'9Gi'" in decision.status["message"]
    fits = decide(capp({**ENGINE, "dependsOn": [], "memory": "5Gi"}), NODES, now=NOW)
    assert fits.status["components"][0]["memory"] == "5Gi"
    assert fits.status["desiredReplicas"] == 1  # the 2-CPU 8Gi node has CPU for 2, memory for 1
