"""The autoscaler's rules (autoscale.decide) round by round, its record, and its manifest.

The Node and Pod objects are shaped as the API serves them (kube-scheduler's Unschedulable
condition and message, DaemonSet owner references); the cluster-level behaviour, with the real
scheduler, EC2 and drain, is tests/test_autoscale_cluster.py.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
import yaml

from clusterous_provisioner import autoscale, autoscaler
from clusterous_provisioner.autoscale import Decision, GroupBounds, Memory, Settings, decide
from clusterous_provisioner.clusterfile import load_spec
from tests.harness.k8s_controllers import tolerates
from tests.harness.tools import validate_k8s

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp()
MIN = 60.0
WORKER = GroupBounds("worker", "t3.large", 1, 5)


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(name: str, created: float, group: str = "worker", cpu: str = "2", ready: bool = True) -> dict:
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": stamp(created),
            "labels": {"clusterous.io/group": group},
        },
        "status": {
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(name: str, cpu: str = "1500m", on: str | None = None, group: str = "worker", why: str | None = None,
        daemon: bool = False) -> dict:  # fmt: skip
    meta: dict = {"name": name, "namespace": "default"}
    if daemon:
        meta["ownerReferences"] = [
            {"kind": "DaemonSet", "name": "agent", "apiVersion": "apps/v1", "uid": "u"}
        ]
    spec: dict = {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}
    if group:
        spec["nodeSelector"] = {"clusterous.io/group": group}
    status: dict = {"phase": "Running" if on else "Pending"}
    if on:
        spec["nodeName"] = on
    elif why:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why}
        ]
    return {"metadata": meta, "spec": spec, "status": status}


CPU_SHORT = (
    "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
)


def one(groups, nodes, pods, now, memory=Memory(), launching=None, settings=Settings(), types=None):
    decisions, memory = decide(groups, nodes, pods, launching or {}, memory, now, settings, types)
    assert len(decisions) == len(groups)
    return decisions[0], memory


def test_a_burst_of_pending_pods_is_one_grow_and_nothing_flaps():
    nodes = [node("w1", T0)]
    busy = [pod("a0", on="w1")]
    # The scheduler marks a burst of 4 pods over two rounds: the first round sees 2 of them.
    first, memory = one([WORKER], nodes, [*busy, pod("a1", why=CPU_SHORT), pod("a2", why=CPU_SHORT)], T0)
    assert (first.action, first.count) == ("grow", 2) and first.current == 1
    burst = [*busy, *(pod(f"a{i}", why=CPU_SHORT) for i in range(1, 5))]
    second, memory = one([WORKER], nodes, burst, T0 + 30, memory, launching={"worker": 2})
    assert second.action == "none" and "cooling down" in second.reason
    # After the cooldown the two launching nodes are counted: only the rest is asked for.
    third, memory = one([WORKER], nodes, burst, T0 + 6 * MIN, memory, launching={"worker": 2})
    assert (third.action, third.count) == ("grow", 2)
    # Registered but not Ready yet counts as on its way too: nothing more is asked for.
    booting = [nodes[0], node("w2", T0 + 7 * MIN, ready=False), node("w3", T0 + 7 * MIN, ready=False)]
    again, _ = one([WORKER], booting, burst, T0 + 12 * MIN, memory, launching={"worker": 2})
    assert again.action == "none" and "4 node(s) on their way" in again.reason
    # The nodes joined, every pod runs on one, all idle a while later except the first:
    # no shrink within the cooldown, none of a busy node, never while something is launching.
    joined = [nodes[0], *(node(f"w{i}", T0 + 6 * MIN + i) for i in range(2, 6))]
    running = [pod(f"a{i - 1}", on=f"w{i}") for i in range(1, 6)]
    fourth, memory = one([WORKER], joined, running, T0 + 8 * MIN, memory)
    assert fourth.action == "none" and "cooling down" in fourth.reason
    quiet = [running[0]]
    fifth, memory = one([WORKER], joined, quiet, T0 + 24 * MIN, memory, launching={"worker": 1})
    assert fifth.action == "none" and "launching" in fifth.reason
    sixth, memory = one([WORKER], joined, quiet, T0 + 24 * MIN, memory)  # idle since +8 min: 16 min
    assert (sixth.action, sixth.count) == ("shrink", 4)
    assert sixth.nodes == ("w5", "w4", "w3", "w2")  # newest first; w1 is busy (and the oldest)


def test_idle_counts_from_the_last_app_pod_never_below_min_and_daemons_are_not_work():
    group = GroupBounds("worker", "t3.large", 2, 5)
    nodes = [node(f"w{i}", T0 + i) for i in range(1, 5)]
    daemons = [pod(f"d{i}", cpu="100m", on=f"w{i}", daemon=True) for i in range(1, 5)]
    apps = [pod("a1", on="w1"), pod("a4", on="w4")]
    d, memory = one([group], nodes, [*daemons, *apps], T0 + 10 * MIN)
    assert d.action == "none"
    assert set(memory.busy_at) == {"w1", "w4"}
    # w2 and w3 never ran an app pod: idle since they were made; w4's pod left at +10 min.
    d, memory = one([group], nodes, daemons + apps[:1], T0 + 16 * MIN, memory)
    assert (d.action, d.nodes) == ("shrink", ("w3", "w2")), d
    d, memory = one([group], nodes[:2], daemons[:2], T0 + 60 * MIN, memory)
    assert d.action == "none" and "at min 2" in d.reason
    nodes_gone = one([group], nodes[:1], [], T0 + 90 * MIN, memory)[0]  # a node lost: back to min
    assert (nodes_gone.action, nodes_gone.count) == ("grow", 1) and "below min 2" in nodes_gone.reason


def test_grow_from_zero_bins_by_instance_size_and_stops_at_max():
    group = GroupBounds("gpu", "g4dn.xlarge", 0, 3)
    nobody = "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    pending = [pod(f"p{i}", cpu="1", group="gpu", why=nobody) for i in range(7)]
    pending.append(pod("huge", cpu="16", group="gpu", why=nobody))
    # No Node of the group: the size comes from EC2 (4 vCPUs): 7 × 1 CPU → 2 nodes; 16 CPUs fits none.
    d, _ = one([group], [], pending, T0, types={"gpu": (4000, 16 * 2**30)})
    assert (d.action, d.count) == ("grow", 2) and "1 pod(s) ask for more" in d.reason
    d, _ = one([group], [], pending, T0)  # no size known yet: nothing rash
    assert d.action == "none" and "unknown" in d.reason
    many = [pod(f"q{i}", cpu="3", group="gpu", why=nobody) for i in range(9)]
    d, _ = one([group], [], many, T0, types={"gpu": (4000, 16 * 2**30)})
    assert (d.action, d.count) == ("grow", 3) and "capped by max 3" in d.reason


def test_only_capacity_shortage_of_an_elastic_group_counts():
    ports = "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
    affinity = pod("x", why=CPU_SHORT, group="")
    affinity["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "clusterous.io/group", "operator": "In", "values": ["worker"]}
                        ]
                    }
                ]
            }
        }
    }
    other = pod("y", why=CPU_SHORT, group="master")
    nodes = [node("w1", T0)]
    d, _ = one([WORKER], nodes, [pod("p", why=ports), other], T0)
    assert d.action == "none"
    d, _ = one([WORKER], nodes, [affinity], T0)
    assert (d.action, d.count) == ("grow", 1)
    # A DaemonSet's requests on a node are taken from what a new node offers: 1.9 CPU is left,
    # so two 1-CPU pods need two nodes.
    nodes_with_agent = [node("w1", T0)]
    agent = pod("agent", cpu="100m", on="w1", daemon=True)
    d, _ = one(
        [WORKER], nodes_with_agent, [agent, pod("a", "1", why=CPU_SHORT), pod("b", "1", why=CPU_SHORT)], T0
    )
    assert (d.action, d.count) == ("grow", 2)


def test_the_record_round_trips_and_keeps_the_memory(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(
        "cluster_name: lab\nnode_groups:\n  worker: {type: c5.large, count: 1, max: 4}\n  fixed: {type: t3.large, count: 1}\n"
    )
    spec = load_spec(path, profile_region="eu-west-1")
    body = autoscaler.record_configmap(spec, "bucket-x")
    assert "status" not in body["data"]  # a re-run of `up` never overwrites what the autoscaler wrote
    record = autoscaler.parse_record(body["data"])
    assert record.groups == (GroupBounds("worker", "c5.large", 0, 4),)
    assert (record.cluster, record.region, record.bucket) == ("lab", "eu-west-1", "bucket-x")
    memory = Memory(last_change={"worker": T0}, busy_at={"w1": T0 + 5})
    decision = Decision("worker", "grow", 2, reason="2 pod(s) unschedulable", current=1)
    status = autoscaler.status_of([decision], record, memory, T0, {"worker": {"launched": ["i-1", "i-2"]}})
    again = autoscaler.parse_record({**body["data"], "status": json.dumps(status)})
    assert again.memory == memory
    entry = again.status["groups"]["worker"]
    assert (entry["current"], entry["min"], entry["max"]) == (1, 0, 4)
    assert entry["last"]["reason"] == "2 pod(s) unschedulable" and entry["last"]["launched"] == ["i-1", "i-2"]
    quiet = autoscaler.status_of(
        [Decision("worker", "none", reason="nothing", current=3)], again, memory, T0, {}
    )
    assert (
        quiet["groups"]["worker"]["last"] == entry["last"]
        and quiet["groups"]["worker"]["reason"] == "nothing"
    )


def test_the_manifest_runs_on_the_controller_with_least_privilege():
    from clusterous_provisioner import addons

    docs = [d for d in yaml.safe_load_all(addons.autoscaler_manifest()) if d]
    assert validate_k8s(docs) == len(docs)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": "true"}
    assert tolerates(
        spec["tolerations"], {"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}
    )
    container = spec["containers"][0]
    assert container["command"] == ["/bin/sh", "/opt/clusterous/code/start.sh"]  # code_bundle.AUTOSCALER
    assert "args" not in container  # the code ConfigMap's `args` say what runs
    rules = [r for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]
    verbs = {(res, v) for r in rules for res in r["resources"] for v in r["verbs"]}
    assert ("nodes", "delete") in verbs and ("pods/eviction", "create") in verbs
    assert not any(res in ("secrets", "deployments") for res, _ in verbs)
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["rules"][0]["resourceNames"] == [autoscaler.CONFIGMAP]
    assert autoscale.GROUP_LABEL == "clusterous.io/group"


def test_dry_run_shows_the_bounds_and_the_cost_at_min_and_at_max(no_aws, cli):
    from clusterous_provisioner import plan as plan_module
    from clusterous_provisioner import pricing

    result = cli(
        [
            "up",
            "--dry-run",
            "--json",
            "--region",
            "us-east-1",
            "--workers",
            "0..10",
            "--worker-type",
            "m5.large",
        ]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    worker = next(r for r in plan["resources"] if r["key"] == "group:worker")
    assert worker["count"] == 0 and "autoscaled 0..10" in worker["detail"]
    (bounds,) = [n for n in plan["notes"] if n.startswith("autoscaler bounds")]
    assert plan_module.AUTOSCALER_NOTE in plan["notes"]
    assert "worker 0..10 (starts at 0)" in bounds
    (costs,) = [n for n in plan["notes"] if "at min" in n]
    node = (
        pricing.instance_hourly("m5.large", "us-east-1").hourly_usd
        + pricing.gp3_hourly(30, "us-east-1").hourly_usd
    )
    at_min, at_max = (float(x) for x in re.findall(r"(\d+\.\d+) USD", costs))
    assert at_min == pytest.approx(plan["hourly_cost_usd"], abs=1e-3)  # starts at min
    assert at_max - at_min == pytest.approx(10 * node, abs=1e-3)
    fixed = json.loads(cli(["up", "--dry-run", "--json", "--region", "us-east-1", "--workers", "3"]).stdout)
    assert not [n for n in fixed["notes"] if n.startswith("autoscaler bounds")]
    # always deployed (docs/elastic.md, "Running it"); without bounds it idles
    assert [n for n in fixed["notes"] if n.startswith("autoscaler: ")] == [
        plan_module.AUTOSCALER_NOTE + "; it idles: no group has bounds"
    ]
    # a budget (issue 17 item 4): how long it lasts at the starting cost, and the autoscaler counts it
    budgeted = cli(["up", "--dry-run", "--json", "--region", "us-east-1", "--workers", "3", "--budget", "50"])
    notes = json.loads(budgeted.stdout)["notes"]
    assert (
        plan_module.AUTOSCALER_NOTE + "; it only counts the budget's spending: no group has bounds" in notes
    )
    (budget,) = [n for n in notes if n.startswith("budget: ")]
    hours = 50 / json.loads(budgeted.stdout)["hourly_cost_usd"]
    assert f"budget: 50.00 USD (about {hours:.0f} hours at the starting cost)" in budget


def test_up_writes_the_record_keeps_the_status_and_empties_groups_that_lost_their_bounds(k8s_api, tmp_path):
    from kubernetes import config as kube_config

    api = kube_config.new_client_from_config(config_file=str(k8s_api.kubeconfig))
    fixed = load_spec(None, {"name": "lab", "workers": "2"}, profile_region="us-east-1")
    k8s_api.create("v1/namespaces", {"metadata": {"name": autoscaler.NAMESPACE}})
    assert autoscaler.write_record(api, fixed, "b") is None  # nothing elastic, nothing recorded
    assert k8s_api.get("v1/configmaps", autoscaler.CONFIGMAP, autoscaler.NAMESPACE) is None
    elastic = load_spec(None, {"name": "lab", "workers": "1..3"}, profile_region="us-east-1")
    assert autoscaler.write_record(api, elastic, "b") == "created"
    k8s_api.patch(
        "v1/configmaps", autoscaler.CONFIGMAP, {"data": {"status": '{"groups": {}}'}}, autoscaler.NAMESPACE
    )
    assert autoscaler.write_record(api, elastic, "b") == "updated"  # a re-run of up
    data = k8s_api.get("v1/configmaps", autoscaler.CONFIGMAP, autoscaler.NAMESPACE)["data"]
    assert data["status"] == '{"groups": {}}'
    assert autoscaler.parse_record(data).groups == (GroupBounds("worker", "t3.large", 1, 3),)
    assert autoscaler.read_status(api)["worker"]["reason"] == "the autoscaler has not run yet"
    assert autoscaler.write_record(api, fixed, "b") == "updated"  # the bounds were dropped
    assert autoscaler.read_status(api) == {}


def test_pods_pending_for_other_reasons_neither_grow_nor_let_the_group_shrink():
    ports = "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
    nodes = [node("w1", T0), node("w2", T0 + 1)]
    d, _ = one([WORKER], nodes, [pod("p", why=ports)], T0 + 60 * MIN)
    assert d.action == "none" and "1 pod(s) pending" in d.reason and "free ports" in d.reason
    d, _ = one([WORKER], nodes, [], T0 + 60 * MIN)
    assert (d.action, d.nodes) == ("shrink", ("w2",))


def test_a_drain_that_cannot_finish_leaves_the_node_schedulable_and_terminates_nothing(k8s_api):
    """A pod arrived on the idle node after the decision, under a budget that allows no eviction."""
    from kubernetes import client
    from kubernetes import config as kube_config

    from clusterous_provisioner.inventory import Inventory

    api = kube_config.new_client_from_config(config_file=str(k8s_api.kubeconfig))
    k8s_api.add_node("w1", {"clusterous.io/group": "worker"})
    labels = {"app": "late"}
    template = {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]},
    }
    deployment = {"replicas": 1, "selector": {"matchLabels": labels}, "template": template}
    k8s_api.create("apps/v1/deployments", {"metadata": {"name": "late"}, "spec": deployment}, "default")
    budget = {"minAvailable": 1, "selector": {"matchLabels": labels}}
    k8s_api.create(
        "policy/v1/poddisruptionbudgets", {"metadata": {"name": "late"}, "spec": budget}, "default"
    )

    def guarded() -> bool:
        status = k8s_api.get("policy/v1/poddisruptionbudgets", "late", "default").get("status") or {}
        return status.get("currentHealthy") == 1 and status.get("disruptionsAllowed") == 0

    k8s_api.wait_for(guarded, 15, "the app running under its budget")
    record = autoscaler.Record("lab", "us-east-1", "b", (GroupBounds("worker", "t3.large", 0, 3),))
    said: list[str] = []
    decision = Decision("worker", "shrink", 1, ("w1",), "idle", 1)
    nodes = k8s_api.list("v1/nodes")
    outcome = autoscaler.act(
        None, client.CoreV1Api(api), Inventory("lab", "us-east-1"), record, decision, nodes,
        autoscaler.make_drain(api, 1.0, said.append), said.append,
    )  # fmt: skip
    assert outcome["terminated"] == [] and "PodDisruptionBudget" in outcome["error"]
    history = k8s_api.history("v1/nodes", "w1")
    assert [h["spec"].get("unschedulable") for h in history if h].count(True) >= 1  # it was cordoned
    assert not k8s_api.get("v1/nodes", "w1")["spec"].get("unschedulable")
    assert any("uncordoned, kept" in line for line in said)


def test_sigterm_ends_the_wait_between_rounds_and_the_process_exits_cleanly(tmp_path) -> None:
    """The pod stopping: SIGTERM ends the wait at once (not after --interval), with exit 0."""
    import signal
    import subprocess
    import sys
    import time

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "clusterous_provisioner.autoscaler", "--interval", "3600",
         "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines = []
        while not any("round failed" in line for line in lines):  # the first round ran (no API here)
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0, "".join(lines) + out
        assert "stopped" in out and time.monotonic() - started < 30
    finally:
        process.kill()
