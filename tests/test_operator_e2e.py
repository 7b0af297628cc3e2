"""The operator end to end: kopf runs the real handlers against the Kubernetes API emulator.

The emulator has no scheduler, kubelet or Deployment controller, so the tests play those
parts: they register Nodes and write Deployment status the way a controller would.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

# The resync interval is read when the handlers module is imported: make it short first.
os.environ.setdefault("CLUSTEROUS_RESYNC_SECONDS", "0.5")

from clusterous_operator.handlers import FINALIZER
from clusterous_operator.images import CLUSTER_REGISTRY

kopf_testing = pytest.importorskip("kopf.testing")
kubernetes = pytest.importorskip("kubernetes")

ROOT = Path(__file__).resolve().parents[1]
CRD = yaml.safe_load((ROOT / "operator/clusterous_operator/crd.yaml").read_text())
GROUP, VERSION, PLURAL = "clusterous.io", "v1alpha1", "clusterapps"
OPERATOR_ARGS = ["run", "--standalone", "--all-namespaces", "-m", "clusterous_operator.handlers"]


def clusterapp(name: str = "demo", image: str = "basic-python") -> dict:
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
    """The emulator with the CRD, a master node and one 2-CPU worker, and the operator's env."""
    monkeypatch.setenv("KUBECONFIG", str(k8s_api.kubeconfig))
    k8s_api.create("apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
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


def status(api, name: str = "demo") -> dict:
    return (api.get("capp", name) or {}).get("status") or {}


def become_ready(api, name: str) -> None:
    """What the Deployment controller would write once every pod is ready."""
    current = deployment(api, name)
    replicas = current["spec"]["replicas"]
    api.write_status(
        "apps/v1/deployments",
        name,
        {
            "observedGeneration": current["metadata"].get("generation", 1),
            "replicas": replicas,
            "readyReplicas": replicas,
            "updatedReplicas": replicas,
        },
        namespace="default",
    )


def run_operator():
    return kopf_testing.KopfRunner(OPERATOR_ARGS, timeout=60)


def test_create_gates_dependents_then_runs_and_delete_releases_finalizer(cluster, custom) -> None:
    with run_operator() as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, clusterapp())
        master = cluster.wait_for(lambda: deployment(cluster, "demo-master"), what="the master Deployment")
        engine = cluster.wait_for(lambda: deployment(cluster, "demo-engine"), what="the engine Deployment")
        assert master["spec"]["replicas"] == 1
        assert engine["spec"]["replicas"] == 0  # waits for the master
        assert master["spec"]["template"]["spec"]["containers"][0]["image"] == f"{CLUSTER_REGISTRY}/basic-python"
        owners = master["metadata"]["ownerReferences"]
        assert owners[0]["kind"] == "ClusterApp" and owners[0]["name"] == "demo"
        assert cluster.get("v1/services", "demo-master")["spec"]["ports"][0]["port"] == 8888
        assert cluster.get("v1/persistentvolumeclaims", "demo-shared")
        waiting = cluster.wait_for(
            lambda: next((c for c in status(cluster).get("components", []) if c["state"] == "Waiting"), None),
            what="the engine to be reported waiting",
        )
        assert "waiting for master" in waiting["message"]
        assert status(cluster)["phase"] in ("Deploying", "Pending")

        become_ready(cluster, "demo-master")
        cluster.wait_for(
            lambda: deployment(cluster, "demo-engine")["spec"]["replicas"] == 2,
            what="the engines to start once the master is ready",
        )
        assert status(cluster)["phase"] != "Running"
        become_ready(cluster, "demo-engine")
        cluster.wait_for(lambda: status(cluster).get("phase") == "Running", what="phase Running")
        assert status(cluster)["ready"] == "3/3"
        assert FINALIZER in cluster.get("capp", "demo")["metadata"]["finalizers"]

        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "demo")
        cluster.wait_for(lambda: cluster.get("capp", "demo") is None, what="the finalizer to be released")
        assert deployment(cluster, "demo-master") is None
        assert deployment(cluster, "demo-engine") is None
        assert cluster.get("v1/services", "demo-master") is None
        assert cluster.get("v1/persistentvolumeclaims", "demo-shared") is None
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
