"""The pure parts of `up`'s readiness wait and of the drain: checks over Kubernetes objects,
cloud-init's result, the stage runner (with a fake clock), the controller record."""

from __future__ import annotations

import pytest
import yaml

from clusterous_cli import controller_boot, endpoint, readiness, stages
from clusterous_cli.stages import Check, Stage
from clusterous_core.errors import BadInput, Failure
from clusterous_provisioner import apply, bootstrap, drain, kubeobjects
from clusterous_provisioner.clusterfile import load_spec
from clusterous_provisioner.kubeobjects import Member


def node(name, ip=None, ready="True", group=None, reason="KubeletReady", message=""):
    labels = {"clusterous.io/group": group} if group else {}
    status = {"conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": message}]}
    if ip:
        status["addresses"] = [{"type": "InternalIP", "address": ip}]
    return {"metadata": {"name": name, "labels": labels}, "status": status}


CONTROLLER = Member("i-c", None, "10.20.0.10", "ip-10-20-0-10.ec2.internal")
WORKER = Member("i-w", "worker", "10.20.16.5", "ip-10-20-16-5.ec2.internal")


def test_nodes_are_matched_by_address_or_hostname_and_all_must_be_ready() -> None:
    nodes = [node("ip-10-20-0-10"), node("w1", ip="10.20.16.5", group="worker")]
    assert kubeobjects.match_node(CONTROLLER, nodes)["metadata"]["name"] == "ip-10-20-0-10"
    assert kubeobjects.match_node(WORKER, nodes)["metadata"]["name"] == "w1"
    check = readiness.check_nodes([CONTROLLER, WORKER], nodes)
    assert check.done and check.summary == "2/2 nodes Ready (controller 1/1, worker 1/1)"


def test_a_missing_unready_or_mislabelled_node_is_named() -> None:
    other = Member("i-x", "worker", "10.20.16.6", None)
    master = Member("i-m", "master", "10.20.16.7", None)
    nodes = [
        node("w1", ip="10.20.16.5", group="worker", ready="False", reason="KubeletNotReady", message="cni"),
        node("m1", ip="10.20.16.7", group="worker"),
    ]
    check = readiness.check_nodes([WORKER, other, master], nodes)
    assert not check.done
    assert check.summary == "0/3 nodes Ready (worker 0/2, master 0/1)"
    assert check.stuck == (
        "node w1 (group worker, i-w): not Ready (KubeletNotReady: cni)",
        "group worker: instance i-x (10.20.16.6) has not registered as a Kubernetes node yet",
        "node m1 (group master, i-m): label clusterous.io/group=worker, expected master",
    )


def test_the_addons_to_wait_for_come_from_the_rendered_manifests() -> None:
    spec = load_spec(None, {"region": "eu-west-1"}, default_name="c1")
    inputs = apply.bootstrap_inputs(spec, "bucket", "0" * 64, "vol-0123456789abcdef0")
    docs = [d for text in bootstrap.render_manifests(inputs).values() for d in yaml.safe_load_all(text) if d]
    addons = readiness.addons_from_manifests(docs)
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert set(addons.crds) == crds and "clusterapps.clusterous.io" in crds
    assert set(addons.deployments) == {
        ("clusterous-system", n)
        for n in (
            "registry",
            "registry-push",
            "registry-mirror",
            "clusterous-operator",
            "clusterous-autoscaler",
            "csi-nfs-controller",
        )
    }
    assert addons.daemonsets == (("clusterous-system", "csi-nfs-node"),)


def deployment(replicas=1, generation=2, **status):
    return {
        "metadata": {"name": "d", "generation": generation},
        "spec": {"replicas": replicas},
        "status": status,
    }


def test_deployment_daemonset_and_crd_readiness() -> None:
    assert kubeobjects.deployment_available(None) == (False, "not created yet")
    assert kubeobjects.deployment_available(deployment())[0] is False
    unavailable = deployment(
        replicas=2,
        availableReplicas=1,
        conditions=[{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}],
    )
    assert kubeobjects.deployment_available(unavailable) == (
        False,
        "1/2 replicas available (MinimumReplicasUnavailable)",
    )
    stale = deployment(availableReplicas=1, updatedReplicas=1, observedGeneration=1)
    assert kubeobjects.deployment_available(stale)[0] is False
    good = deployment(availableReplicas=1, updatedReplicas=1, observedGeneration=2)
    assert kubeobjects.deployment_available(good) == (True, "1/1 available")

    ds = {"metadata": {"name": "n", "generation": 1}, "status": {}}
    assert kubeobjects.daemonset_ready(ds) == (False, "not scheduled yet")
    ds["status"] = {"observedGeneration": 1, "desiredNumberScheduled": 3, "numberReady": 2}
    assert kubeobjects.daemonset_ready(ds) == (False, "2/3 pods ready")
    ds["status"] |= {"numberReady": 3, "numberAvailable": 3, "updatedNumberScheduled": 3}
    assert kubeobjects.daemonset_ready(ds)[0] is True

    crd = {"metadata": {"name": "x"}, "status": {"conditions": [{"type": "Established", "status": "True"}]}}
    assert kubeobjects.crd_established(crd) == (True, "established")
    assert kubeobjects.crd_established(None)[0] is False


def test_a_stuck_pod_says_why_with_its_newest_events() -> None:
    pod = {
        "metadata": {"name": "registry-abc"},
        "spec": {"nodeName": "ip-10-20-0-10"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "registry",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
                }
            ],
        },
    }
    events = [
        {"type": "Normal", "reason": f"R{i}", "message": f"m{i}", "lastTimestamp": f"2025-01-01T00:00:0{i}Z"}
        for i in (3, 1, 4, 2)
    ]
    assert kubeobjects.pod_problem(pod, events) == (
        "pod registry-abc: Pending; on ip-10-20-0-10; container registry waiting: ImagePullBackOff: not found; "
        "last events: Normal R2: m2 | Normal R3: m3 | Normal R4: m4"
    )


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("running\n", (False, [])),
        ('finished\n{"v1": {"errors": []}}', (True, [])),
        ('finished\n{"v1": {"errors": ["scripts_user failed"]}}', (True, ["scripts_user failed"])),
        ("finished\n", (True, [])),
    ],
)
def test_cloud_init_result(output, expected) -> None:
    assert controller_boot.parse_cloud_init(output) == expected


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_stage_polls_until_done() -> None:
    clock, answers = FakeClock(), iter([Check(False, "a"), Check(False, "b"), Check(True, "c")])
    lines: list[str] = []
    check = stages.run_stage(
        Stage("api", "the API", lambda: next(answers)), 10, lines.append, clock, clock.sleep
    )
    assert check.summary == "c" and lines == ["the API: a", "the API: b", "the API: c"]
    assert clock.now == pytest.approx(2 * stages.poll_interval(10))


def test_a_stage_that_never_finishes_names_what_is_stuck() -> None:
    clock, polls = FakeClock(), []

    def poll() -> Check:
        polls.append(clock.now)
        return Check(False, "1/2 nodes Ready", ("node w1: not Ready",))

    stage = Stage("nodes", "every node Ready", poll, lambda check: ["node w1: last events: Warning X: y"])
    with pytest.raises(Failure) as caught:
        stages.run_stage(stage, 5, lambda _: None, clock, clock.sleep)
    text = str(caught.value)
    assert text.startswith("timed out after 5 s waiting for every node Ready: 1/2 nodes Ready")
    assert "  - node w1: not Ready\n  - node w1: last events: Warning X: y" in text
    assert "re-run `clusterous-k8s up`" in text and caught.value.exit_code == 1
    assert polls[-1] <= 5 and len(polls) == int(5 / stages.poll_interval(5))


def test_a_failure_inside_a_poll_is_not_waited_out() -> None:
    clock = FakeClock()

    def poll() -> Check:
        raise Failure("host key CHANGED")

    with pytest.raises(Failure, match="CHANGED"):
        stages.run_stage(Stage("ssh", "SSH", poll), 100, lambda _: None, clock, clock.sleep)
    assert clock.now == 0


def test_timeouts() -> None:
    assert stages.timeouts_for(None) == stages.DEFAULT_TIMEOUTS
    assert set(stages.timeouts_for(7).values()) == {7.0}
    with pytest.raises(BadInput):
        stages.timeouts_for(0)


def controller(os_name="al2023"):
    return {
        "InstanceId": "i-c",
        "PublicIpAddress": "203.0.113.10",
        "Tags": [
            {"Key": "clusterous:role", "Value": "controller"},
            {"Key": "clusterous:os", "Value": os_name},
        ],
    }


def test_the_controller_record_uses_the_public_address_and_the_os_login() -> None:
    fields = endpoint.endpoint_fields(controller("al2023"), "eu-west-1", "/k/c.pem")
    assert fields == {
        "host": "203.0.113.10",
        "user": "ec2-user",
        "instance_id": "i-c",
        "region": "eu-west-1",
        "key_file": "/k/c.pem",
    }
    assert endpoint.endpoint_fields(controller("ubuntu-24.04"), "eu-west-1", None)["user"] == "ubuntu"
    kept = endpoint.endpoint_fields(
        controller("al2023"),
        "eu-west-1",
        None,
        existing={"host": "old", "jump_host": "me@bastion", "port": 2222, "user": "admin", "region": "x"},
    )
    assert kept["host"] == "203.0.113.10" and kept["region"] == "eu-west-1"  # learned from AWS
    assert kept["jump_host"] == "me@bastion" and kept["port"] == 2222 and kept["user"] == "admin"  # hand-set


def test_drain_leaves_daemonset_and_static_pods() -> None:
    def pod(name, **meta):
        return {"metadata": {"name": name, "namespace": "default", **meta}}

    evict, skipped = drain.pods_to_evict(
        [
            pod("app", ownerReferences=[{"kind": "ReplicaSet"}]),
            pod("nfs", ownerReferences=[{"kind": "DaemonSet"}]),
            pod("static", annotations={"kubernetes.io/config.mirror": "x"}),
            pod("bare"),
        ]
    )
    assert [p["metadata"]["name"] for p in evict] == ["app", "bare"]
    assert skipped == ["default/nfs (DaemonSet)", "default/static (static pod)"]
