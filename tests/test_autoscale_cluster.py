"""The autoscaler against a cluster `up` made (issue 17 items 1-4).

The world: moto behind the AWS realism layer; the Kubernetes API emulator with its scheduler and
kubelets; FakeK3s (tests/test_up_ready.py) registering a 2-CPU Node for every running instance.
`up --workers 1..4` records the bounds in the ConfigMap; the test then creates workloads and runs
the autoscaler's rounds (`run_once`) at chosen clock times, and observes EC2 and the API.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from kubernetes import config as kube_config

from clusterous_provisioner import autoscale, autoscaler
from clusterous_provisioner.clients import Clients
from tests.test_up_ready import CLUSTER, UP, cluster_side, node_name  # noqa: F401 - a fixture

MINUTE = 60.0


def autoscaler_once(k8s_api) -> subprocess.CompletedProcess:
    """One round of the autoscaler as its pod runs it (`--once`), against the emulator's API."""
    argv = [
        sys.executable,
        "-m",
        "clusterous_provisioner.autoscaler",
        "--once",
        "--kubeconfig",
        str(k8s_api.kubeconfig),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def _workers(aws, states=("running", "pending")) -> dict[str, dict]:
    flt = [
        {"Name": "tag:clusterous:cluster", "Values": [CLUSTER]},
        {"Name": "tag:clusterous:group", "Values": ["worker"]},
        {"Name": "instance-state-name", "Values": list(states)},
    ]
    reply = aws.client("ec2", direct=True).describe_instances(Filters=flt)
    return {i["InstanceId"]: i for r in reply["Reservations"] for i in r["Instances"]}


def _app(k8s_api, replicas: int, cpu: str = "1500m") -> None:
    """A Deployment whose every pod takes most of a 2-CPU worker, and a DaemonSet on every node."""
    labels = {"app": "sim"}
    container = {"name": "c", "image": "busybox:1.37", "resources": {"requests": {"cpu": cpu}}}
    pod_spec = {"nodeSelector": {"clusterous.io/group": "worker"}, "containers": [container]}
    k8s_api.create(
        "apps/v1/deployments",
        {
            "metadata": {"name": "sim"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
        },
        "default",
    )


def _daemon(k8s_api) -> None:
    labels = {"app": "agent"}
    pod = {"containers": [{"name": "a", "image": "busybox:1.37", "resources": {"requests": {"cpu": "100m"}}}]}
    k8s_api.create(
        "apps/v1/daemonsets",
        {
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        },
        "default",
    )


def _unschedulable(k8s_api) -> list[str]:
    found = []
    for pod in k8s_api.list("v1/pods", "default"):
        message = autoscale.unschedulable_message(pod)
        if message and "Insufficient cpu" in message:
            found.append(pod["metadata"]["name"])
    return found


def _available(k8s_api) -> int:
    return (k8s_api.get("apps/v1/deployments", "sim", "default").get("status") or {}).get(
        "availableReplicas", 0
    )


@pytest.fixture
def elastic(cluster_side, aws, k8s_api, cli):  # noqa: F811 - the imported fixture
    """A cluster with workers 1..4, starting at 1, and what a round needs."""
    result = cli([*UP, "--workers", "1..4", "--timeout", "30"])
    assert result.exit_code == 0, result.output
    assert "autoscaler bounds created: worker 1..4" in result.stderr
    api = kube_config.new_client_from_config(config_file=str(k8s_api.kubeconfig))
    said: list[str] = []

    def round_at(now: float) -> dict[str, autoscale.Decision]:
        record = autoscaler.read_record(api)
        drain = autoscaler.make_drain(api, 15, said.append)
        decisions = autoscaler.run_once(api, Clients(aws.region), record, now, drain, said.append)
        return {d.group: d for d in decisions}

    return round_at, said


def test_up_records_bounds_pending_pods_grow_the_group_idle_nodes_go_newest_first(
    elastic, aws, k8s_api, cli
) -> None:
    round_at, said = elastic
    record = autoscaler.parse_record(k8s_api.get("v1/configmaps", "autoscaler", "clusterous-system")["data"])
    assert record.cluster == CLUSTER and record.bucket == "clusterous-ready-test"
    assert record.groups == (autoscale.GroupBounds("worker", "t3.large", 1, 4),)  # master is fixed
    assert record.settings == autoscale.Settings(idle_minutes=15, cooldown_seconds=300)
    (first,) = _workers(aws)
    _daemon(k8s_api)
    _app(k8s_api, 3)  # one fits the single worker; two are Unschedulable (Insufficient cpu)
    k8s_api.wait_for(lambda: len(_unschedulable(k8s_api)) == 2, 15, "two pods unschedulable for CPU")

    # A lost RunInstances answer (retried by botocore with its ClientToken) launches the batch once.
    aws.realism.lose_response("RunInstances")
    aws.reset_calls()
    t0 = time.time()
    grow = round_at(t0)["worker"]
    assert (grow.action, grow.count) == ("grow", 2), grow
    assert "2 pod(s) unschedulable" in grow.reason and "t3.large" in grow.reason
    assert len(aws.calls("RunInstances")) == 1 and not aws.calls("TerminateInstances")
    assert len(_workers(aws)) == 3
    k8s_api.wait_for(lambda: _available(k8s_api) == 3, 15, "the app on the new nodes")
    status = autoscaler.parse_record(
        k8s_api.get("v1/configmaps", "autoscaler", "clusterous-system")["data"]
    ).status
    entry = status["groups"]["worker"]
    assert (entry["current"], entry["min"], entry["max"]) == (1, 1, 4)
    assert entry["last"]["action"] == "grow" and len(entry["last"]["launched"]) == 2
    shown = cli(["status", "--cluster", CLUSTER, "--json"])
    assert shown.exit_code == 0, shown.output
    worker = json.loads(shown.stdout)["autoscaler"]["worker"]
    assert (worker["min"], worker["max"], worker["last"]["action"]) == (1, 4, "grow")
    table = cli(["status", "--cluster", CLUSTER])
    assert "autoscaler: worker 3 node(s) (min 1, max 4)" in table.stdout
    assert "last change" in table.stdout and "2 pod(s) unschedulable" in table.stdout

    # No flapping: within the cooldown nothing happens, even with another burst pending.
    k8s_api.patch("apps/v1/deployments", "sim", {"spec": {"replicas": 6}}, "default")
    k8s_api.wait_for(lambda: len(_unschedulable(k8s_api)) == 3, 15, "a second burst pending")
    aws.reset_calls()
    calm = round_at(t0 + 2 * MINUTE)["worker"]
    assert calm.action == "none" and "cooling down" in calm.reason
    assert not aws.calls("RunInstances")
    # After it, the second burst is one decision, capped by max (3 more pods, room for 1 node).
    capped = round_at(t0 + 6 * MINUTE)["worker"]
    assert (capped.action, capped.count) == ("grow", 1) and "capped by max 4" in capped.reason
    assert len(aws.calls("RunInstances")) == 1 and len(_workers(aws)) == 4
    k8s_api.wait_for(lambda: _available(k8s_api) == 4, 15, "a fourth replica running")
    at_max = round_at(t0 + 12 * MINUTE)["worker"]
    assert at_max.action == "none" and "at max 4" in at_max.reason and len(aws.calls("RunInstances")) == 1

    # The work ends: the app goes; DaemonSet pods stay on every node and do not count as work.
    k8s_api.delete("apps/v1/deployments", "sim", "default")
    k8s_api.wait_for(
        lambda: (
            not [p for p in k8s_api.list("v1/pods", "default") if p["metadata"]["labels"].get("app") == "sim"]
        ),
        15,
        "the app's pods gone",
    )
    aws.reset_calls()
    early = round_at(t0 + 20 * MINUTE)["worker"]  # idle for 8 minutes only (busy at +12 min)
    assert early.action == "none" and not aws.calls("TerminateInstances")
    workers = _workers(aws)
    shrink = round_at(t0 + 28 * MINUTE)["worker"]  # 16 minutes without an app pod
    assert (shrink.action, shrink.count) == ("shrink", 3), shrink
    assert "ran no app pod for 15 min" in shrink.reason
    assert len(aws.calls("TerminateInstances")) == 1
    assert set(_workers(aws)) == {first}  # never below min 1: the oldest stays
    gone = {node_name(i) for i in workers.values() if i["InstanceId"] != first}
    assert set(shrink.nodes) == gone
    for node in gone:
        history = k8s_api.history("v1/nodes", node)
        assert None in history  # drained: deleted through the API
        assert history[history.index(None) - 1]["spec"].get("unschedulable") is True  # cordoned first
    assert any("cordoned" in line for line in said)

    aws.reset_calls()
    floor = round_at(t0 + 60 * MINUTE)["worker"]
    assert floor.action == "none" and "at min 1" in floor.reason
    assert not aws.calls("TerminateInstances") and not aws.calls("RunInstances")
    # A Node a kubelet re-registered before its instance went is deleted again, by now.
    assert all(k8s_api.get("v1/nodes", n) is None for n in gone)


def test_the_process_grows_a_group_from_zero_for_its_first_pods(cluster_side, aws, k8s_api, cli) -> None:  # noqa: F811
    """`python -m clusterous_provisioner.autoscaler --once`, as a process: the group has no node,
    so the scheduler says no node matches (not "Insufficient cpu"), and the size comes from EC2."""
    result = cli([*UP, "--workers", "0..3", "--timeout", "30"])
    assert result.exit_code == 0, result.output
    assert "autoscaler bounds created: worker 0..3" in result.stderr and _workers(aws) == {}
    _app(k8s_api, 3, cpu="900m")  # a t3.large has 2 vCPUs: two replicas fit one, three need two

    def waiting() -> bool:
        messages = [autoscale.unschedulable_message(p) for p in k8s_api.list("v1/pods", "default")]
        return len([m for m in messages if m and "didn't match Pod's node affinity/selector" in m]) == 3

    k8s_api.wait_for(waiting, 15, "three pods with no node of their group")
    aws.reset_calls()
    run = autoscaler_once(k8s_api)
    assert "worker: grow 2: 3 pod(s) unschedulable" in run.stdout
    assert len(aws.calls("RunInstances")) == 1 and len(aws.calls("DescribeInstanceTypes")) == 1
    assert len(_workers(aws)) == 2
    k8s_api.wait_for(lambda: _available(k8s_api) == 3, 15, "the app on the new nodes")
    shown = json.loads(cli(["status", "--cluster", CLUSTER, "--json"]).stdout)["autoscaler"]["worker"]
    assert (shown["min"], shown["max"], shown["last"]["count"]) == (0, 3, 2)
