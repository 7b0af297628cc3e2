"""The operator end to end: kopf runs the real handlers against the Kubernetes API emulator.

The emulator's controllers (Deployment, ReplicaSet, scheduler, kubelet) run the pods; the
tests set up the world (Nodes, an image not pushed yet) and observe.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

# The resync interval is read when the handlers module is imported: make it short first.
os.environ.setdefault("CLUSTEROUS_RESYNC_SECONDS", "0.5")

import kopf.testing as kopf_testing  # noqa: E402 - a broken kopf fails the module, never skips it
import kubernetes  # noqa: E402

from clusterous_operator.builders import APP_LABEL
from clusterous_operator.handlers import FINALIZER
from clusterous_operator.images import CLUSTER_REGISTRY
from tests.addons_support import apply_storage_classes, operator_account

ROOT = Path(__file__).resolve().parents[1]
CRD = yaml.safe_load((ROOT / "operator/clusterous_operator/crd.yaml").read_text())
GROUP, VERSION, PLURAL = "clusterous.io", "v1alpha1", "clusterapps"
WAIT = 30  # seconds; generous, the test machine is shared
OPERATOR_ARGS = ["run", "--standalone", "--all-namespaces", "-m", "clusterous_operator.handlers"]


def clusterapp(name: str = "demo", image: str = "registry:5000/basic-python") -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterApp",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "components": [
                {"name": "master", "group": "master", "image": image, "cpu": "0.5", "ports": [8888]},
                {
                    "name": "engine",
                    "group": "worker",
                    "image": image,
                    "replicas": "auto",
                    "cpu": "1",
                    "dependsOn": ["master"],
                },
            ]
        },
    }


@pytest.fixture()
def cluster(k8s_api, monkeypatch):
    """The emulator with the CRD, the storage classes, a master node and one 2-CPU worker; the
    operator runs as its ServiceAccount, with only the rights manifests/operator.yaml grants."""
    k8s_api.create("apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
    monkeypatch.setenv("KUBECONFIG", str(operator_account(k8s_api)))
    apply_storage_classes(k8s_api)
    k8s_api.add_node("master-1", labels={"clusterous.io/group": "master"}, cpu="2")
    k8s_api.add_node("worker-1", labels={"clusterous.io/group": "worker"}, cpu="2")
    return k8s_api


@pytest.fixture()
def custom(cluster):
    client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield kubernetes.client.CustomObjectsApi(client)
    client.close()


def deployment(api, name: str) -> dict | None:
    return api.get("apps/v1/deployments", name)


def image(api, name: str) -> str:
    return deployment(api, name)["spec"]["template"]["spec"]["containers"][0]["image"]


def replicas(api, name: str) -> int | None:
    current = deployment(api, name)
    return current and current["spec"]["replicas"]


def status(api, name: str = "demo") -> dict:
    return (api.get("capp", name) or {}).get("status") or {}


def rolled_out(api, name: str) -> bool:
    current = deployment(api, name)
    want = current["spec"]["replicas"]
    state = current.get("status") or {}
    return state.get("observedGeneration") == current["metadata"]["generation"] and (
        state.get("availableReplicas", 0) == state.get("updatedReplicas", 0) == want
    )


def assert_ran_clean(runner) -> None:
    """No crash, and no request its ServiceAccount may not make (403 Forbidden)."""
    assert runner.exception is None, runner.output
    assert "Forbidden" not in runner.output, runner.output


def run_operator():
    return kopf_testing.KopfRunner(OPERATOR_ARGS, timeout=60)


def test_create_gates_dependents_then_runs_and_delete_releases_finalizer(cluster, custom) -> None:
    cluster.world.missing_images.add(f"{CLUSTER_REGISTRY}/basic-python")  # not pushed yet: the master waits
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, clusterapp())
        master = cluster.wait_for(
            lambda: deployment(cluster, "demo-master"), timeout=WAIT, what="the master Deployment"
        )
        cluster.wait_for(
            lambda: cluster.get("v1/services", "demo-engine"), timeout=WAIT, what="the engine Service"
        )
        assert master["spec"]["replicas"] == 1
        assert deployment(cluster, "demo-engine") is None  # waits for the master
        assert (
            master["spec"]["template"]["spec"]["containers"][0]["image"] == f"{CLUSTER_REGISTRY}/basic-python"
        )
        owners = master["metadata"]["ownerReferences"]
        assert owners[0]["kind"] == "ClusterApp" and owners[0]["name"] == "demo"
        assert cluster.get("v1/services", "demo-master")["spec"]["ports"][0]["port"] == 8888
        assert cluster.get("v1/persistentvolumeclaims", "demo-shared")
        waiting = cluster.wait_for(
            lambda: next((c for c in status(cluster).get("components", []) if c["state"] == "Waiting"), None),
            timeout=WAIT,
            what="the engine to be reported waiting",
        )
        assert "waiting for master" in waiting["message"]
        assert status(cluster)["phase"] in ("Deploying", "Pending")
        assert deployment(cluster, "demo-engine") is None and not rolled_out(cluster, "demo-master")

        cluster.world.missing_images.clear()  # the image is pushed: the master's pod starts
        cluster.wait_for(
            lambda: (deployment(cluster, "demo-engine") or {}).get("spec", {}).get("replicas") == 2,
            timeout=WAIT,
            what="the engines to start once the master is ready",
        )
        cluster.wait_for(
            lambda: status(cluster).get("phase") == "Running", timeout=WAIT, what="phase Running"
        )
        assert status(cluster)["ready"] == "3/3"
        assert FINALIZER in cluster.get("capp", "demo")["metadata"]["finalizers"]

        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "demo")
        cluster.wait_for(
            lambda: cluster.get("capp", "demo") is None, timeout=WAIT, what="the finalizer to be released"
        )
        assert deployment(cluster, "demo-master") is None
        assert deployment(cluster, "demo-engine") is None
        assert cluster.get("v1/services", "demo-master") is None
        assert cluster.get("v1/persistentvolumeclaims", "demo-shared") is None
    assert_ran_clean(runner)
    assert runner.exit_code == 0, runner.output


def test_image_change_rolls_the_deployment(cluster, custom) -> None:
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, clusterapp())
        cluster.wait_for(
            lambda: deployment(cluster, "demo-master"), timeout=WAIT, what="the master Deployment"
        )
        # the Deployment controller writes status meanwhile: the operator's replace meets 409 twice
        cluster.overtake_reads("apps/v1/deployments", "demo-master", times=2)
        patch = {"spec": {"components": clusterapp(image="ghcr.io/lab/sim:2")["spec"]["components"]}}
        custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "demo", patch)
        cluster.wait_for(
            lambda: image(cluster, "demo-master") == "ghcr.io/lab/sim:2",
            timeout=WAIT,
            what="the new image in the Deployment",
        )
    assert_ran_clean(runner)
    assert "Conflict" not in runner.output  # redone at once, not left to kopf's retry with backoff


def test_nodes_joining_and_leaving_change_auto_replicas(cluster, custom) -> None:
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, clusterapp())
        cluster.wait_for(
            lambda: deployment(cluster, "demo-master"), timeout=WAIT, what="the master Deployment"
        )
        cluster.wait_for(
            lambda: replicas(cluster, "demo-engine") == 2, timeout=WAIT, what="2 engines on one 2-CPU worker"
        )
        cluster.add_node("worker-2", labels={"clusterous.io/group": "worker"}, cpu="4")
        cluster.add_node("worker-3", labels={"clusterous.io/group": "worker"}, cpu="2", ready=False)
        cluster.wait_for(
            lambda: replicas(cluster, "demo-engine") == 6,
            timeout=WAIT,
            what="6 engines once a 4-CPU worker joins",
        )
        cluster.patch("v1/nodes", "worker-2", {"spec": {"unschedulable": True}})
        cluster.wait_for(
            lambda: replicas(cluster, "demo-engine") == 2,
            timeout=WAIT,
            what="back to 2 engines when the node is cordoned",
        )
        cluster.wait_for(
            lambda: rolled_out(cluster, "demo-engine"), timeout=WAIT, what="the engines to settle"
        )
    assert_ran_clean(runner)


def test_invalid_spec_fails_with_the_field_and_creates_nothing(cluster, custom) -> None:
    app = clusterapp()
    app["spec"]["components"][1]["group"] = "wrker"
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, app)
        cluster.wait_for(lambda: status(cluster).get("phase") == "Failed", timeout=WAIT, what="phase Failed")
        assert "spec.components[1].group" in status(cluster)["message"]
        assert "master, worker" in status(cluster)["message"]
        assert deployment(cluster, "demo-master") is None
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, "demo", {"spec": clusterapp()["spec"]}
        )
        cluster.wait_for(
            lambda: deployment(cluster, "demo-master"), timeout=WAIT, what="children once the spec is fixed"
        )
    assert_ran_clean(runner)


def test_resync_with_nothing_changed_writes_nothing(cluster, custom) -> None:
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, clusterapp())
        cluster.wait_for(lambda: deployment(cluster, "demo-engine"), timeout=WAIT, what="the children")
        cluster.wait_for(
            lambda: status(cluster).get("phase") == "Running", timeout=WAIT, what="phase Running"
        )
        before = len(requests_written(cluster))
        import time

        time.sleep(2.5)  # five resync intervals
        after = requests_written(cluster)[before:]
        assert after == [], after
    assert_ran_clean(runner)


def requests_written(api) -> list[str]:
    """Every write request the emulator received, as 'METHOD path'."""

    def read(emulator) -> list[str]:
        return [
            f"{r.method.value} {r.url.path}"
            for r in emulator._requests
            if r.method.value in ("POST", "PUT", "PATCH", "DELETE")
        ]

    return api.call(read)


def test_kubectl_apply_example_and_get_capp(cluster, kubectl) -> None:
    example = ROOT / "examples/basic-python/clusterapp.yaml"
    with run_operator() as runner:
        assert "clusterapp.clusterous.io/basic-python created" in kubectl("apply", "-f", str(example)).stdout
        cluster.wait_for(
            lambda: status(cluster, "basic-python").get("phase") == "Running",
            timeout=WAIT,
            what="phase Running",
        )
        assert kubectl("get", "capp").stdout.splitlines()[1].split()[0] == "basic-python"
        # The emulator renders no server-side tables, so each printer column's jsonPath is
        # evaluated by kubectl itself and compared with the status it should show.
        columns = {c["name"]: c["jsonPath"] for c in CRD["spec"]["versions"][0]["additionalPrinterColumns"]}
        shown = {
            name: kubectl("get", "capp", "basic-python", "-o", f"jsonpath={{{path}}}").stdout
            for name, path in columns.items()
        }
        current = cluster.get("capp", "basic-python")
        assert shown["Phase"] == current["status"]["phase"]
        assert shown["Ready"] == current["status"]["ready"]
        assert shown["Message"] == current["status"]["message"]
        assert shown["Age"] == current["metadata"]["creationTimestamp"]
        labels = deployment(cluster, "basic-python-engine")["metadata"]["labels"]
        assert labels[APP_LABEL] == "basic-python"
    assert_ran_clean(runner)


def test_auto_cpu_leaves_room_for_what_already_runs_on_the_nodes(cluster, custom) -> None:
    """A node agent requests CPU on every node: a `cpu: auto` master and `count: auto` engines
    must still fit the real scheduler."""
    start_node_agent(cluster, {"cpu": "250m"})
    app = clusterapp()
    app["spec"]["components"][0]["cpu"] = "auto"
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, app)
        cluster.wait_for(
            lambda: status(cluster).get("phase") == "Running", timeout=WAIT, what="phase Running"
        )
        master = deployment(cluster, "demo-master")["spec"]["template"]["spec"]["containers"][0]
        assert master["resources"]["requests"]["cpu"] == "1750m"  # 2 CPUs less the agent's 250m
        assert replicas(cluster, "demo-engine") == 1  # one 1-CPU engine fits beside the agent
        assert rolled_out(cluster, "demo-master") and rolled_out(cluster, "demo-engine")
    assert_ran_clean(runner)


def host_port_app(replicas) -> dict:
    app = clusterapp()
    app["spec"]["components"] = [
        {
            "name": "agent",
            "group": "worker",
            "image": "basic-python",
            "replicas": replicas,
            "cpu": "0.5",
            "ports": [9100],
            "hostNetwork": True,
        }
    ]
    return app


def test_hostnetwork_replicas_with_ports_spread_one_per_node(cluster, custom) -> None:
    """Host ports collide: a real node (and the emulator's scheduler) refuses a second replica
    with the same hostNetwork port, so `auto` counts one replica per node."""
    cluster.add_node("worker-2", labels={"clusterous.io/group": "worker"}, cpu="2")
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, host_port_app("auto"))
        cluster.wait_for(
            lambda: status(cluster).get("phase") == "Running", timeout=WAIT, what="phase Running"
        )
        assert replicas(cluster, "demo-agent") == 2  # not 4 per 2-CPU node
        pods = [p for p in cluster.list("v1/pods", "default") if p["metadata"]["labels"].get(APP_LABEL)]
        assert sorted(p["spec"]["nodeName"] for p in pods) == ["worker-1", "worker-2"]
    assert_ran_clean(runner)


def test_fixed_hostnetwork_replicas_beyond_one_per_node_say_to_scale(cluster, custom) -> None:
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, host_port_app(2))

        def refused() -> list[dict]:
            return [
                c
                for p in cluster.list("v1/pods", "default")
                for c in (p.get("status") or {}).get("conditions") or []
                if c.get("reason") == "Unschedulable"
            ]

        cluster.wait_for(refused, timeout=WAIT, what="the second replica refused by the scheduler")
        assert "didn't have free ports" in refused()[0]["message"]
        cluster.wait_for(
            lambda: "scale worker 2" in status(cluster).get("message", ""),
            timeout=WAIT,
            what="the status to ask for a second worker",
        )
        assert "at most one replica per node" in status(cluster)["message"]
        assert status(cluster)["phase"] in ("Degraded", "Pending")
        cluster.add_node("worker-2", labels={"clusterous.io/group": "worker"}, cpu="2")
        cluster.wait_for(
            lambda: status(cluster).get("phase") == "Running", timeout=WAIT, what="phase Running"
        )
    assert_ran_clean(runner)


def start_node_agent(cluster, requests: dict) -> None:
    """A DaemonSet (like Fluent Bit or the NFS driver) requesting `requests` on every node."""
    labels = {"app": "node-agent"}
    agent = {"name": "agent", "image": "fluent/fluent-bit:3.2", "resources": {"requests": requests}}
    cluster.create(
        "apps/v1/daemonsets",
        {
            "metadata": {"name": "node-agent"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [agent]}},
            },
        },
        "kube-system",
    )
    cluster.wait_for(
        lambda: (
            ((cluster.get("apps/v1/daemonsets", "node-agent", "kube-system") or {}).get("status") or {}).get(
                "numberReady"
            )
            == len(cluster.list("v1/nodes"))
        ),
        timeout=WAIT,
        what="the agent on every node",
    )


def test_every_container_requests_memory_in_proportion_to_its_cpu(cluster, custom) -> None:
    """Nodes of 2 CPUs and 4Gi; the agent holds 250m and 512Mi on each."""
    start_node_agent(cluster, {"cpu": "250m", "memory": "512Mi"})
    app = clusterapp()
    app["spec"]["components"][0]["cpu"] = "auto"
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, app)
        cluster.wait_for(
            lambda: status(cluster).get("phase") == "Running", timeout=WAIT, what="phase Running"
        )

        def requests(name: str) -> dict:
            return deployment(cluster, name)["spec"]["template"]["spec"]["containers"][0]["resources"]

        # all of the 1750m left, so all of the 3584Mi left
        assert requests("demo-master") == {"requests": {"cpu": "1750m", "memory": "3584Mi"}}
        # 1 CPU of 1750m free: 4/7 of 3584Mi, 2048Mi
        assert requests("demo-engine") == {"requests": {"cpu": "1", "memory": "2Gi"}}
        assert {c["name"]: c["memory"] for c in status(cluster)["components"]} == {
            "master": "3584Mi",
            "engine": "2Gi",
        }
    assert_ran_clean(runner)


def test_memory_that_fits_no_node_fails_naming_the_field(cluster, custom) -> None:
    start_node_agent(cluster, {"memory": "512Mi"})
    app = clusterapp()
    app["spec"]["components"][1]["memory"] = "4Gi"
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, app)
        cluster.wait_for(lambda: status(cluster).get("phase") == "Failed", timeout=WAIT, what="phase Failed")
        message = status(cluster)["message"]
        assert message.startswith("spec.components[1].memory: expected at most 3584Mi"), message
        assert deployment(cluster, "demo-master") is None
    assert_ran_clean(runner)


def test_upstream_underscored_group_names_run(cluster, custom) -> None:
    """Clusterous' docs name groups io_master and cpu_worker; nodes carry them as label values."""
    cluster.add_node("io-master-1", labels={"clusterous.io/group": "io_master"}, cpu="2")
    cluster.add_node("cpu-worker-1", labels={"clusterous.io/group": "cpu_worker"}, cpu="2")
    app = clusterapp()
    app["spec"]["components"][0]["group"] = "io_master"
    app["spec"]["components"][1]["group"] = "cpu_worker"
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, app)
        cluster.wait_for(
            lambda: status(cluster).get("phase") == "Running", timeout=WAIT, what="phase Running"
        )
        assert status(cluster)["ready"] == "3/3"
        nodes = {
            p["metadata"]["labels"]["clusterous.io/component"]: p["spec"]["nodeName"]
            for p in cluster.list("v1/pods", "default")
            if p["metadata"]["labels"].get(APP_LABEL) == "demo"
        }
        assert nodes == {"master": "io-master-1", "engine": "cpu-worker-1"}
    assert_ran_clean(runner)


def test_render_with_the_clusters_nodes_and_pods_shows_what_the_operator_made(
    cluster, custom, kubectl, tmp_path, capsys
) -> None:
    """`render --nodes --pods` fed with kubectl's listings of this cluster prints the replicas
    and requests the operator chose beside the node agent; without --pods it would not."""
    from clusterous_cli.main import run as cli_run

    start_node_agent(cluster, {"cpu": "300m", "memory": "256Mi"})
    app = clusterapp()
    app["spec"]["components"][0]["cpu"] = "auto"
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, app)
        cluster.wait_for(
            lambda: status(cluster).get("phase") == "Running", timeout=WAIT, what="phase Running"
        )
        (tmp_path / "nodes.yaml").write_text(kubectl("get", "nodes", "-o", "yaml").stdout)
        (tmp_path / "pods.yaml").write_text(kubectl("get", "pods", "-A", "-o", "yaml").stdout)
    assert_ran_clean(runner)
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(app))

    def rendered(*extra: str) -> dict:
        capsys.readouterr()
        assert (
            cli_run(["render", str(tmp_path / "app.yaml"), "--nodes", str(tmp_path / "nodes.yaml"), *extra])
            == 0
        )
        return {
            o["metadata"]["name"]: (
                o["spec"]["replicas"],
                o["spec"]["template"]["spec"]["containers"][0]["resources"],
            )
            for o in yaml.safe_load_all(capsys.readouterr().out)
            if o and o["kind"] == "Deployment"
        }

    live = {
        name: (
            deployment(cluster, name)["spec"]["replicas"],
            deployment(cluster, name)["spec"]["template"]["spec"]["containers"][0]["resources"],
        )
        for name in ("demo-master", "demo-engine")
    }
    assert live["demo-master"][1]["requests"]["cpu"] == "1700m"  # 2 CPUs less the agent's 300m
    assert rendered("--pods", str(tmp_path / "pods.yaml")) == live
    assert rendered() != live  # the bare nodes' arithmetic differs


def test_running_is_reported_at_once_with_no_resync_and_costs_8_writes(cluster, custom, tmp_path) -> None:
    """The operator as its own process with a one-hour resync: only watch events can move the
    app. Running must follow the last Deployment becoming available within a second, and the
    app cost at most its 5 creates, kopf's finalizer and 2 status patches (no Normal Events)."""
    import subprocess
    import sys
    import time

    env = {**os.environ, "CLUSTEROUS_RESYNC_SECONDS": "3600"}
    log = (tmp_path / "operator.log").open("w")
    operator = subprocess.Popen(
        [sys.executable, "-m", "kopf", *OPERATOR_ARGS], env=env, stdout=log, stderr=log
    )
    try:
        before = len(requests_written(cluster))
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, clusterapp())

        def available() -> bool:
            return all(
                deployment(cluster, n) and rolled_out(cluster, n) and replicas(cluster, n)
                for n in ("demo-master", "demo-engine")
            )

        available_at = None
        deadline = time.monotonic() + WAIT
        while True:
            polled_at = time.monotonic()
            if status(cluster).get("phase") == "Running":
                break
            assert time.monotonic() < deadline, (tmp_path / "operator.log").read_text()[-3000:]
            if available_at is None and available():
                available_at = time.monotonic()
            time.sleep(0.02)
        running_at = time.monotonic()
        assert available()
        # On a busy machine both can happen between two polls: then the delay is at most the
        # time since the last poll that saw the app not Running.
        since = available_at if available_at is not None else polled_at
        assert running_at - since < 1.0, running_at - since
        time.sleep(1.0)  # anything the operator still had to write
        created, *writes = requests_written(cluster)[before:]  # the test's create, then the operator's
        assert created == "POST /apis/clusterous.io/v1alpha1/namespaces/default/clusterapps"
        assert len(writes) <= 8, "\n".join(writes)  # 5 creates, the finalizer, Deploying, Running
        assert sum(w.endswith("/status") for w in writes) == 2 and not [w for w in writes if "/events" in w]
    finally:
        operator.terminate()
        operator.wait(30)
        log.close()


def test_the_operator_serves_only_its_application_namespace(cluster, custom, tmp_path) -> None:
    """As deployed (CLUSTEROUS_APP_NAMESPACE=default, writes granted only there): a ClusterApp
    elsewhere is left alone — no finalizer, no children, no status, no 403 in the log."""
    import subprocess
    import sys
    import time

    cluster.create("v1/namespaces", {"metadata": {"name": "elsewhere"}})
    other = clusterapp("stray")
    other["metadata"]["namespace"] = "elsewhere"
    custom.create_namespaced_custom_object(GROUP, VERSION, "elsewhere", PLURAL, other)
    env = {**os.environ, "CLUSTEROUS_APP_NAMESPACE": "default"}
    log_path = tmp_path / "operator.log"
    with log_path.open("w") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "kopf", *OPERATOR_ARGS], env=env, stdout=log, stderr=log
        )
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, clusterapp())
            cluster.wait_for(
                lambda: status(cluster).get("phase") == "Running", timeout=WAIT, what="phase Running"
            )
            time.sleep(1.5)  # three resyncs
        finally:
            operator.terminate()
            operator.wait(30)
    stray = cluster.get("capp", "stray", "elsewhere")
    assert not stray.get("status") and not stray["metadata"].get("finalizers")
    assert cluster.list("apps/v1/deployments", "elsewhere") == []
    assert "Forbidden" not in log_path.read_text() and "403" not in log_path.read_text()
