"""`run` on a cluster whose node group is at zero (issue 17 item 2): the app's pods go Pending,
the autoscaler grows the group, and `run` says so until the new nodes are Ready and the app runs.

The world: `up --workers 0..3`, the default layout (tests/test_up_ready.py:
moto behind the AWS realism layer, FakeK3s registering a 2-CPU Node for every running
instance); the real kopf operator against the Kubernetes API emulator with its scheduler and
kubelets; `run` in a thread, as a user's terminal; the autoscaler's rounds (`run_once`) driven
by the test while `run` waits.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import yaml
from kubernetes import config as kube_config

os.environ.setdefault("CLUSTEROUS_RESYNC_SECONDS", "0.5")

import kopf.testing as kopf_testing  # noqa: E402

from clusterous_cli import scaleup  # noqa: E402
from clusterous_operator.reconcile import decide  # noqa: E402
from clusterous_provisioner import autoscale, autoscaler  # noqa: E402
from clusterous_provisioner.clients import Clients  # noqa: E402
from tests.test_run_quit import OPERATOR_ARGS  # noqa: E402
from tests.test_up_ready import UP, cluster_side  # noqa: E402, F401 - a fixture

APP = {
    "apiVersion": "clusterous.io/v1alpha1",
    "kind": "ClusterApp",
    "metadata": {"name": "sim"},
    "spec": {
        "components": [
            {"name": "engine", "group": "worker", "image": "busybox:1.37", "replicas": 3, "cpu": "900m",
             "command": ["sleep", "infinity"]},
        ]
    },
}  # fmt: skip


def _unschedulable(k8s_api) -> int:
    """Pods kube-scheduler found no node for (the master's does not match, the controller is tainted)."""
    return len([p for p in k8s_api.list("v1/pods", "default") if autoscale.unschedulable_message(p)])


def _workers(k8s_api) -> list[str]:
    return [
        n["metadata"]["name"]
        for n in k8s_api.list("v1/nodes")
        if (n["metadata"].get("labels") or {}).get("clusterous.io/group") == "worker"
    ]


@pytest.fixture
def at_zero(cluster_side, aws, k8s_api, cli, tmp_path, monkeypatch):  # noqa: F811 - the imported fixture
    result = cli([*UP, "--workers", "0..3", "--timeout", "30"])  # master 1 (fixed), worker at 0
    assert result.exit_code == 0, result.output
    assert "autoscaler bounds created: worker 0..3" in result.stderr
    monkeypatch.setattr(scaleup, "POLL_SECONDS", 0.2)
    monkeypatch.setenv("KUBECONFIG", str(k8s_api.kubeconfig))  # the operator's own access
    api = kube_config.new_client_from_config(config_file=str(k8s_api.kubeconfig))

    def round_now() -> autoscale.Decision:
        record = autoscaler.read_record(api)
        drain = autoscaler.make_drain(api, 15, lambda line: None)
        (decision,) = autoscaler.run_once(
            api, Clients(aws.region), record, time.time(), drain, lambda line: None
        )
        return decision

    with kopf_testing.KopfRunner(OPERATOR_ARGS, timeout=60) as runner:
        yield round_now, cluster_side
    assert runner.exception is None, runner.output


def test_run_on_a_group_at_zero_waits_for_the_autoscaler_and_its_nodes_with_progress(
    at_zero, aws, k8s_api, cli, tmp_path
) -> None:
    round_now, k3s = at_zero
    k3s.not_ready_groups.add("worker")  # new workers boot a while before their kubelet is Ready
    quiet = round_now()  # the autoscaler runs before anything is asked of it
    assert quiet.action == "none" and quiet.current == 0
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(APP))
    outcome: dict = {}
    runner = threading.Thread(
        target=lambda: outcome.update(result=cli(["run", str(path), "--timeout", "120"]))
    )
    runner.start()
    try:
        k8s_api.wait_for(lambda: _unschedulable(k8s_api) == 3, 30, "three pods with no node of their group")
        time.sleep(1)  # `run` is waiting for the autoscaler: the next round comes
        assert runner.is_alive()
        grow = round_now()
        assert (grow.action, grow.count) == ("grow", 2), grow
        k8s_api.wait_for(lambda: len(_workers(k8s_api)) == 2, 15, "the new workers registered, NotReady")
        time.sleep(1)  # `run` looks at them
        for name in _workers(k8s_api):  # their kubelets become Ready
            status = k8s_api.get("v1/nodes", name)["status"]
            status["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
            k8s_api.write_status("v1/nodes", name, status)
    finally:
        runner.join(120)
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()

    def first(text: str) -> int:
        found = [i for i, line in enumerate(lines) if text in line]
        assert found, f"{text!r} not in:\n{result.stderr}"
        return found[0]

    waiting = first("worker: 0 node(s), waiting for the autoscaler (next decision in ")
    assert "nothing pending" in lines[waiting]  # the round before `run`'s pods existed
    launching = first("worker: 0 → 2 node(s), 0 Ready (instances boot in a few minutes)")
    ready = first("worker: 2 node(s) Ready")
    running = first("sim: Running")
    assert waiting < launching < ready < running
    assert len([line for line in lines if "waiting for the autoscaler" in line]) == 1  # no countdown spam


def test_a_group_the_autoscaler_may_grow_exists_at_zero_and_auto_asks_it_for_a_first_node() -> None:
    """The operator's side (reconcile.decide): with only the master's Node, a component on the
    elastic worker group is no spec error, and `count: auto` there has one Pending replica (the
    pod that makes the autoscaler grow the group); without the record it is refused, as before."""
    master = {
        "metadata": {"name": "m1", "labels": {"clusterous.io/group": "master"}},
        "status": {
            "allocatable": {"cpu": "2", "memory": "8Gi"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    body = {**APP, "metadata": {"name": "sim", "namespace": "default", "generation": 1}}
    auto = {**APP["spec"]["components"][0], "replicas": "auto", "cpu": "auto"}
    body["spec"] = {"components": [auto]}
    refused = decide(body, [master], now="2026-11-30T00:00:00Z")
    assert refused.error is not None and refused.error.field == "spec.components[0].group"
    grown = decide(body, [master], now="2026-11-30T00:00:00Z", elastic=frozenset({"worker"}))
    assert grown.error is None
    (deployment,) = [c for c in grown.children if c["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"clusterous.io/group": "worker"}
    (component,) = grown.status["components"]
    assert (
        "the autoscaler grows worker" in component["message"] and "scale worker" not in component["message"]
    )
