"""The emulator's controllers (tests/harness/k8s_controllers.py): tests set up nodes and images
and observe what the Deployment, ReplicaSet, DaemonSet, Job, volume and garbage-collection
controllers, the scheduler and the kubelet make of them."""

from __future__ import annotations

import asyncio
import re

from tests.harness.k8s import K8sApi
from tests.ssh_support import HELMCHART_CRD

WAIT = 10
CONTROLLER_TAINT = {"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}


def deployment(name: str, replicas: int = 1, cpu: str | None = None, **pod_spec) -> dict:
    container = {"name": "app", "image": pod_spec.pop("image", "busybox:1.37")}
    if cpu:
        container["resources"] = {"requests": {"cpu": cpu}}
    if ports := pod_spec.pop("host_ports", None):
        container["ports"] = [{"containerPort": p, "hostPort": p} for p in ports]
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container], **pod_spec}},
        },
    }


def pods(api: K8sApi, app: str) -> list[dict]:
    return [p for p in api.list("v1/pods", "default") if p["metadata"].get("labels", {}).get("app") == app]


def status(api: K8sApi, name: str, resource: str = "apps/v1/deployments") -> dict:
    return (api.get(resource, name, "default") or {}).get("status") or {}


def rolled_out(api: K8sApi, name: str, replicas: int) -> bool:
    current = api.get("apps/v1/deployments", name, "default")
    s = current.get("status") or {}
    return (
        s.get("observedGeneration") == current["metadata"]["generation"]
        and s.get("updatedReplicas", 0) == replicas
        and s.get("availableReplicas", 0) == replicas
        and s.get("replicas", 0) == replicas
    )


def unschedulable_message(pod: dict) -> str | None:
    for entry in (pod.get("status") or {}).get("conditions") or []:
        if (
            entry["type"] == "PodScheduled"
            and entry["status"] == "False"
            and entry["reason"] == "Unschedulable"
        ):
            return entry["message"]
    return None


def test_a_deployment_runs_ready_pods_through_a_replicaset(k8s_api: K8sApi) -> None:
    k8s_api.add_node("worker-1", {"clusterous.io/group": "worker"}, cpu="2")
    k8s_api.create("apps/v1/deployments", deployment("web", replicas=2, cpu="500m"), "default")
    k8s_api.wait_for(lambda: rolled_out(k8s_api, "web", 2), WAIT, "the rollout")
    (replica_set,) = k8s_api.list("apps/v1/replicasets", "default")
    assert replica_set["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert replica_set["metadata"]["name"].startswith("web-")
    running = pods(k8s_api, "web")
    assert len(running) == 2
    for pod in running:
        assert pod["spec"]["nodeName"] == "worker-1"
        assert pod["status"]["phase"] == "Running" and pod["status"]["podIP"].startswith("10.42.")
        assert pod["metadata"]["ownerReferences"][0]["uid"] == replica_set["metadata"]["uid"]
    conditions = {c["type"]: c for c in status(k8s_api, "web")["conditions"]}
    assert conditions["Available"]["status"] == "True"
    assert conditions["Progressing"]["reason"] == "NewReplicaSetAvailable"


def test_a_pod_that_fits_no_node_is_unschedulable_with_the_schedulers_reasons(k8s_api: K8sApi) -> None:
    k8s_api.add_node("worker-1", {"clusterous.io/group": "worker"}, cpu="2")
    k8s_api.add_node(
        "controller", {"node-role.kubernetes.io/control-plane": "true"}, taints=[CONTROLLER_TAINT]
    )
    k8s_api.create("apps/v1/deployments", deployment("big", cpu="3"), "default")
    (pod,) = k8s_api.wait_for(
        lambda: [p for p in pods(k8s_api, "big") if unschedulable_message(p)], WAIT, "a verdict"
    )
    assert unschedulable_message(pod) == (
        "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint "
        "{CriticalAddonsOnly: true}. preemption: 0/2 nodes are available: "
        "2 Preemption is not helpful for scheduling."
    )
    assert pod["status"]["phase"] == "Pending" and "nodeName" not in pod["spec"]
    events = k8s_api.list("v1/events", "default")
    assert any(
        e["reason"] == "FailedScheduling" and e["involvedObject"]["name"] == pod["metadata"]["name"]
        for e in events
    )
    assert status(k8s_api, "big").get("availableReplicas", 0) == 0
    assert {c["type"]: c["status"] for c in status(k8s_api, "big")["conditions"]}["Available"] == "False"


def test_requests_of_pods_already_bound_count_against_allocatable(k8s_api: K8sApi) -> None:
    k8s_api.add_node("worker-1", cpu="2", memory="4Gi")
    k8s_api.create("apps/v1/deployments", deployment("agent", cpu="1500m"), "default")
    k8s_api.wait_for(lambda: rolled_out(k8s_api, "agent", 1), WAIT, "the first pod")
    k8s_api.create("apps/v1/deployments", deployment("app", cpu="1"), "default")
    (pod,) = k8s_api.wait_for(
        lambda: [p for p in pods(k8s_api, "app") if unschedulable_message(p)], WAIT, "a verdict"
    )
    assert "1 Insufficient cpu" in unschedulable_message(pod)
    k8s_api.delete("apps/v1/deployments", "agent", "default")  # its pods go with it: room again
    k8s_api.wait_for(
        lambda: rolled_out(k8s_api, "app", 1), WAIT, "the second pod to fit once the first is gone"
    )
    assert k8s_api.list("apps/v1/replicasets", "default")[0]["metadata"]["name"].startswith("app-")


def test_node_selectors_tolerations_and_host_ports_place_pods(k8s_api: K8sApi) -> None:
    k8s_api.add_node("master-1", {"clusterous.io/group": "master"}, cpu="4")
    k8s_api.add_node("worker-1", {"clusterous.io/group": "worker"}, cpu="4")
    k8s_api.add_node("controller", taints=[CONTROLLER_TAINT], cpu="4")
    k8s_api.create(
        "apps/v1/deployments",
        deployment("engine", replicas=3, host_ports=[8888], nodeSelector={"clusterous.io/group": "worker"}),
        "default",
    )
    k8s_api.wait_for(lambda: status(k8s_api, "engine").get("availableReplicas") == 1, WAIT, "one engine")
    placed = [p for p in pods(k8s_api, "engine") if p["spec"].get("nodeName")]
    assert [p["spec"]["nodeName"] for p in placed] == ["worker-1"]
    waiting = k8s_api.wait_for(
        lambda: [m for p in pods(k8s_api, "engine") if (m := unschedulable_message(p))], WAIT, "x"
    )
    assert "1 node(s) didn't have free ports for the requested pod ports" in waiting[0]
    assert "1 node(s) didn't match Pod's node affinity/selector" in waiting[0]
    assert "1 node(s) had untolerated taint {CriticalAddonsOnly: true}" in waiting[0]
    tolerant = deployment("ops", tolerations=[{"key": "CriticalAddonsOnly", "operator": "Exists"}])
    tolerant["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "controller"}
    k8s_api.create("apps/v1/deployments", tolerant, "default")
    k8s_api.wait_for(lambda: rolled_out(k8s_api, "ops", 1), WAIT, "the tolerating pod on the controller")


def test_an_image_the_world_lacks_fails_to_pull_until_it_exists(k8s_api: K8sApi) -> None:
    k8s_api.add_node("worker-1")
    k8s_api.world.missing_images.add("registry:5000/missing")
    k8s_api.create("apps/v1/deployments", deployment("sim", image="registry:5000/missing"), "default")

    def waiting_reason() -> str | None:
        for pod in pods(k8s_api, "sim"):
            for entry in (pod.get("status") or {}).get("containerStatuses") or []:
                return (entry["state"].get("waiting") or {}).get("reason")
        return None

    assert k8s_api.wait_for(waiting_reason, WAIT, "the pull failure") == "ErrImagePull"
    assert not rolled_out(k8s_api, "sim", 1)
    k8s_api.world.missing_images.clear()  # pushed meanwhile: the kubelet's next pull works
    k8s_api.wait_for(lambda: rolled_out(k8s_api, "sim", 1), WAIT, "the pod to start after the push")


def test_a_new_template_rolls_out_a_new_replicaset_and_deletion_cascades(k8s_api: K8sApi) -> None:
    k8s_api.add_node("worker-1", cpu="4")
    k8s_api.create("apps/v1/deployments", deployment("web", replicas=2), "default")
    k8s_api.wait_for(lambda: rolled_out(k8s_api, "web", 2), WAIT, "the first rollout")
    first = {p["metadata"]["name"] for p in pods(k8s_api, "web")}
    k8s_api.patch(
        "apps/v1/deployments",
        "web",
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "busybox:1.38"}]}}}},
        "default",
    )
    k8s_api.wait_for(
        lambda: (
            rolled_out(k8s_api, "web", 2)
            and not first & {p["metadata"]["name"] for p in pods(k8s_api, "web")}
        ),
        WAIT,
        "the second rollout to replace every pod",
    )
    sets = {
        rs["metadata"]["name"]: rs["spec"]["replicas"]
        for rs in k8s_api.list("apps/v1/replicasets", "default")
    }
    assert sorted(sets.values()) == [0, 2]
    k8s_api.delete("apps/v1/deployments", "web", "default")
    k8s_api.wait_for(
        lambda: not k8s_api.list("apps/v1/replicasets", "default") and not pods(k8s_api, "web"),
        WAIT,
        "garbage collection of the ReplicaSets and pods",
    )


def test_a_daemonset_runs_one_pod_per_eligible_node(k8s_api: K8sApi) -> None:
    k8s_api.add_node("worker-1")
    k8s_api.add_node("controller", taints=[CONTROLLER_TAINT])
    labels = {"app": "agent"}
    body = {
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "a", "image": "fluent-bit:3.2"}]},
            },
        },
    }
    k8s_api.create("apps/v1/daemonsets", body, "default")
    k8s_api.wait_for(
        lambda: status(k8s_api, "agent", "apps/v1/daemonsets").get("numberReady") == 1, WAIT, "one agent"
    )
    assert [p["spec"]["nodeName"] for p in pods(k8s_api, "agent")] == ["worker-1"]
    k8s_api.add_node("worker-2")
    k8s_api.wait_for(
        lambda: status(k8s_api, "agent", "apps/v1/daemonsets").get("numberReady") == 2, WAIT, "two"
    )
    k8s_api.delete("v1/nodes", "worker-1")
    k8s_api.wait_for(
        lambda: [p["spec"]["nodeName"] for p in pods(k8s_api, "agent")] == ["worker-2"],
        WAIT,
        "the lost node's pod gone",
    )
    assert status(k8s_api, "agent", "apps/v1/daemonsets")["desiredNumberScheduled"] == 1


def test_a_job_completes_or_fails_as_its_container_exits(k8s_api: K8sApi) -> None:
    k8s_api.add_node("worker-1")

    async def build(emulator, pod, container) -> int:
        await emulator.write_pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"], "#1 DONE\n", None)
        return 0 if "good" in pod["metadata"]["name"] else 1

    k8s_api.world.programs.append((re.compile("buildkit"), build))
    for name in ("good", "bad"):
        body = {
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 1,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "b", "image": "moby/buildkit:v0.18"}],
                    }
                },
            },
        }
        k8s_api.create("batch/v1/jobs", body, "default")

    def outcome(name: str) -> str | None:
        for entry in status(k8s_api, name, "batch/v1/jobs").get("conditions") or []:
            if entry["type"] in ("Complete", "Failed") and entry["status"] == "True":
                return entry["type"]
        return None

    assert k8s_api.wait_for(lambda: outcome("good"), WAIT, "the good build") == "Complete"
    assert k8s_api.wait_for(lambda: outcome("bad"), WAIT, "the bad build") == "Failed"
    assert status(k8s_api, "bad", "batch/v1/jobs")["failed"] == 2  # backoffLimit 1: two attempts
    good_pods = [
        p for p in k8s_api.list("v1/pods", "default") if p["metadata"]["labels"].get("job-name") == "good"
    ]
    assert [p["status"]["phase"] for p in good_pods] == ["Succeeded"]


def test_claims_bind_through_their_storage_class_or_hold_their_pods(k8s_api: K8sApi) -> None:
    k8s_api.add_node("worker-1")
    k8s_api.create(
        "storage.k8s.io/v1/storageclasses",
        {
            "metadata": {"name": "clusterous-shared"},
            "provisioner": "nfs.csi.k8s.io",
            "reclaimPolicy": "Retain",
        },
    )
    for name, storage_class in (("shared", "clusterous-shared"), ("lost", "no-such-class")):
        claim = {
            "metadata": {"name": name},
            "spec": {
                "storageClassName": storage_class,
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
        k8s_api.create("v1/persistentvolumeclaims", claim, "default")
        volume = {"name": "data", "persistentVolumeClaim": {"claimName": name}}
        k8s_api.create("apps/v1/deployments", deployment(f"uses-{name}", volumes=[volume]), "default")
    k8s_api.wait_for(lambda: rolled_out(k8s_api, "uses-shared", 1), WAIT, "the pod with a bound claim")
    bound = k8s_api.get("v1/persistentvolumeclaims", "shared", "default")
    assert bound["status"]["phase"] == "Bound" and k8s_api.get(
        "v1/persistentvolumes", bound["spec"]["volumeName"]
    )
    (pod,) = k8s_api.wait_for(
        lambda: [p for p in pods(k8s_api, "uses-lost") if unschedulable_message(p)], WAIT, "x"
    )
    assert "pod has unbound immediate PersistentVolumeClaims" in unschedulable_message(pod)
    events = [e for e in k8s_api.list("v1/events", "default") if e["reason"] == "ProvisioningFailed"]
    assert 'storageclass.storage.k8s.io "no-such-class" not found' in events[0]["message"]


def test_services_get_a_cluster_ip_unless_headless(k8s_api: K8sApi) -> None:
    port = [{"port": 80}]
    normal = k8s_api.create("v1/services", {"metadata": {"name": "web"}, "spec": {"ports": port}}, "default")
    headless = k8s_api.create(
        "v1/services",
        {"metadata": {"name": "engines"}, "spec": {"clusterIP": "None", "ports": port}},
        "default",
    )
    assert normal["spec"]["clusterIP"].startswith("10.43.") and headless["spec"]["clusterIP"] == "None"


def test_a_helmchart_gets_k3s_finalizer_and_deletion_takes_a_while(k8s_api: K8sApi) -> None:
    k8s_api.create("apiextensions.k8s.io/v1/customresourcedefinitions", HELMCHART_CRD)
    k8s_api.world.helm_delete_seconds = 0.5
    chart = {"metadata": {"name": "logging"}, "spec": {"chart": "clusterous-logging"}}
    k8s_api.create("helm.cattle.io/v1/helmcharts", chart, "kube-system")
    k8s_api.wait_for(
        lambda: k8s_api.get("helm.cattle.io/v1/helmcharts", "logging", "kube-system")["metadata"].get(
            "finalizers"
        ),
        WAIT,
        "the helm-controller's finalizer",
    )
    k8s_api.delete("helm.cattle.io/v1/helmcharts", "logging", "kube-system")
    assert k8s_api.get("helm.cattle.io/v1/helmcharts", "logging", "kube-system")["metadata"][
        "deletionTimestamp"
    ]
    k8s_api.wait_for(
        lambda: k8s_api.get("helm.cattle.io/v1/helmcharts", "logging", "kube-system") is None,
        WAIT,
        "helm delete",
    )


def test_a_crashing_container_of_a_deployment_is_restarted_not_ready(k8s_api: K8sApi) -> None:
    k8s_api.add_node("worker-1")

    async def crash(emulator, pod, container) -> int:
        await asyncio.sleep(0)
        return 3

    k8s_api.world.programs.append((re.compile("crashy"), crash))
    k8s_api.create("apps/v1/deployments", deployment("crashy", image="crashy:1"), "default")

    def crash_loop() -> dict | None:
        for pod in pods(k8s_api, "crashy"):
            for entry in (pod.get("status") or {}).get("containerStatuses") or []:
                if (entry["state"].get("waiting") or {}).get("reason") == "CrashLoopBackOff":
                    return entry
        return None

    entry = k8s_api.wait_for(crash_loop, WAIT, "CrashLoopBackOff")
    assert entry["lastState"]["terminated"]["exitCode"] == 3 and entry["restartCount"] == 1
    assert status(k8s_api, "crashy").get("availableReplicas", 0) == 0


def test_evictions_honour_the_disruption_budget_as_a_drain_meets_it(k8s_api: K8sApi) -> None:
    import kubernetes

    k8s_api.add_node("worker-1", cpu="4")
    k8s_api.create("apps/v1/deployments", deployment("web", replicas=2), "default")
    budget = {
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
    }
    k8s_api.create("policy/v1/poddisruptionbudgets", budget, "default")
    k8s_api.wait_for(lambda: rolled_out(k8s_api, "web", 2), WAIT, "the rollout")
    k8s_api.wait_for(
        lambda: status(k8s_api, "web", "policy/v1/poddisruptionbudgets").get("disruptionsAllowed") == 1,
        WAIT,
        "budget",
    )
    k8s_api.patch("v1/nodes", "worker-1", {"spec": {"unschedulable": True}})  # cordoned: no replacement fits
    client = kubernetes.config.new_client_from_config(config_file=str(k8s_api.kubeconfig))
    core = kubernetes.client.CoreV1Api(client)
    first, second = sorted(p["metadata"]["name"] for p in pods(k8s_api, "web"))

    def evict(name: str) -> int:
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": "default"},
        }
        try:
            core.create_namespaced_pod_eviction(name, "default", body)
        except kubernetes.client.ApiException as exc:
            return exc.status
        return 201

    try:
        assert evict(first) == 201
        assert evict(second) == 429  # one healthy pod left, and the budget needs one
        replacement = k8s_api.wait_for(
            lambda: [p for p in pods(k8s_api, "web") if unschedulable_message(p)], WAIT, "the replacement"
        )
        assert "1 node(s) were unschedulable" in unschedulable_message(replacement[0])
        assert evict(replacement[0]["metadata"]["name"]) == 201  # a pending pod needs no budget
        assert evict("no-such-pod") == 404
        k8s_api.patch("v1/nodes", "worker-1", {"spec": {"unschedulable": False}})
        k8s_api.wait_for(
            lambda: rolled_out(k8s_api, "web", 2), WAIT, "the replacement to run once uncordoned"
        )
        k8s_api.wait_for(
            lambda: status(k8s_api, "web", "policy/v1/poddisruptionbudgets").get("disruptionsAllowed") == 1,
            WAIT,
            "x",
        )
        assert evict(second) == 201
    finally:
        client.close()
