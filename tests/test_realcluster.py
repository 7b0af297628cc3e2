"""The operator, `run` and `quit` against a real cluster: real scheduler, kubelet and pods.

Skipped unless CLUSTEROUS_REAL_KUBECONFIG names a kubeconfig (its current context is used): a
maintainer's k3s, a kind cluster, or a cluster `clusterous-k8s up` made. Nothing is emulated
here: the Deployment readiness and pod phases the tests wait for are written by the cluster's own
controllers and kubelets.

What a cluster made by `up` has and a plain k3s/kind lacks, the fixture supplies for the test
and takes away afterwards (only what it added):
- the ClusterApp CRD (operator/clusterous_operator/crd.yaml), applied with kubectl;
- a node group: the first schedulable Ready node gets `clusterous.io/group=clusterous-realtest`
  unless some node already has a group (then that group is used);
- the shared volume: `clusterous-shared` is a class the NFS CSI driver provisions on a real
  cluster; here a hostPath PersistentVolume of that class is pre-bound to the app's claim (a
  no-provisioner StorageClass of that name is created if the cluster has none);
- the operator: the real kopf handlers (KopfRunner, `--namespace=default`) logged in with the
  kubeconfig — unless the cluster already runs the clusterous operator (clusterous-system), which
  then does the work.
The applications use a public image (python:3.12-slim): the examples' own images are built by
`run` on the cluster into the cluster's registry, which only a cluster made by `up` has (the
real-AWS smoke test runs the example end to end).

`run`/`quit` reach a cluster only through the SSH controller (kubeapi: the API through an SSH
tunnel, credentials read from the controller's k3s.yaml). The harness sshd plays the controller:
the kubeconfig is its k3s.yaml, and the API is reached through the real SSH tunnel at
127.0.0.1:<port> as seen from this machine — the API port itself when the server is on loopback
(kind, a local k3s), else a local TCP relay to it; TLS is still verified, so the server's
certificate must name 127.0.0.1 (k3s's and kind's do). Not checked: the app's web tunnel (it
targets a Service's ClusterIP, which this machine reaches only when it is a node) and the
files `run` copies being visible in the pods (the harness controller's shared folder is not the
cluster's volume).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import kopf.testing as kopf_testing
import kubernetes
import pytest
import yaml

from clusterous_cli import tunnels
from tests.harness.tools import tool_path
from tests.ssh_support import make_controller, splice

REAL_KUBECONFIG = os.environ.get("CLUSTEROUS_REAL_KUBECONFIG")
pytestmark = [
    pytest.mark.realcluster,
    pytest.mark.skipif(
        not REAL_KUBECONFIG,
        reason="real-cluster test: set CLUSTEROUS_REAL_KUBECONFIG to the kubeconfig of a k3s or kind cluster",
    ),
    pytest.mark.timeout(900),  # image pulls on a fresh node take minutes
]

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "operator" / "clusterous_operator" / "crd.yaml"
CRD_NAME = "clusterapps.clusterous.io"
GROUP_LABEL = "clusterous.io/group"
TEST_GROUP = "clusterous-realtest"
IMAGE = "docker.io/library/python:3.12-slim"
OPERATOR_ARGS = ["run", "--standalone", "--namespace=default", "-m", "clusterous_operator.handlers"]
NAMESPACE = "default"  # where `run` puts applications
READY_TIMEOUT = 600.0


def wait(condition, what: str, timeout: float = READY_TIMEOUT, every: float = 2.0):
    """Poll a condition of the real cluster (it has no emulator to step); its value once truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def not_found(call) -> bool:
    try:
        call()
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


class RealCluster:
    """The cluster, what the fixture added to it, and ways to look at it."""

    def __init__(self, kubeconfig: Path, api):
        self.kubeconfig, self.api = kubeconfig, api
        self.core = kubernetes.client.CoreV1Api(api)
        self.apps = kubernetes.client.AppsV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.group = TEST_GROUP
        self.undo: list = []
        self.app_names: list[str] = []

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip

    def clusterapp(self, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(
                "clusterous.io", "v1alpha1", NAMESPACE, "clusterapps", name
            )
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def available(self, deployment: str) -> int:
        """availableReplicas as the cluster's Deployment controller reports it."""
        try:
            found = self.apps.read_namespaced_deployment(deployment, NAMESPACE)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return 0
            raise
        if (found.status.observed_generation or 0) < found.metadata.generation:
            return 0
        return found.status.available_replicas or 0

    def pods(self, app: str) -> list:
        return self.core.list_namespaced_pod(NAMESPACE, label_selector=f"clusterous.io/app={app}").items

    def children_gone(self, app: str) -> bool:
        selector = f"clusterous.io/app={app}"
        return not (
            self.apps.list_namespaced_deployment(NAMESPACE, label_selector=selector).items
            or self.core.list_namespaced_service(NAMESPACE, label_selector=selector).items
        )

    def shared_volume_for(self, app: str) -> None:
        """A hostPath PV of class clusterous-shared, pre-bound to the app's claim."""
        self.app_names.append(app)
        storage = kubernetes.client.StorageV1Api(self.api)
        if not_found(lambda: storage.read_storage_class("clusterous-shared")):
            storage.create_storage_class(
                {
                    "metadata": {
                        "name": "clusterous-shared",
                        "labels": {"clusterous.io/test": "realcluster"},
                    },
                    "provisioner": "kubernetes.io/no-provisioner",
                    "volumeBindingMode": "Immediate",
                    "reclaimPolicy": "Retain",
                }
            )
            self.undo.append(lambda: storage.delete_storage_class("clusterous-shared"))
        pv = f"{app}-shared-realtest"
        self.core.create_persistent_volume(
            {
                "metadata": {"name": pv, "labels": {"clusterous.io/test": "realcluster"}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "clusterous-shared",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": f"/tmp/{pv}", "type": "DirectoryOrCreate"},
                    "claimRef": {"namespace": NAMESPACE, "name": f"{app}-shared"},
                },
            }
        )
        self.undo.append(lambda: self.core.delete_persistent_volume(pv))


def flattened(kubeconfig: str, into: Path) -> Path:
    """The current context with its certificates inline: one file the controller can hand out."""
    view = subprocess.run(
        [str(tool_path("kubectl")), "--kubeconfig", kubeconfig, "config", "view", "--raw", "--minify", "--flatten"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    into.write_text(view.stdout)
    into.chmod(0o600)
    return into


def _choose_group(cluster: RealCluster) -> None:
    nodes = cluster.core.list_node().items
    grouped = [n.metadata.labels[GROUP_LABEL] for n in nodes if GROUP_LABEL in (n.metadata.labels or {})]
    if grouped:
        cluster.group = grouped[0]
        return

    def schedulable(node) -> bool:
        ready = {c.type: c.status for c in node.status.conditions or []}.get("Ready") == "True"
        taints = [t for t in node.spec.taints or [] if t.effect in ("NoSchedule", "NoExecute")]
        return ready and not taints and not node.spec.unschedulable

    node = next((n for n in nodes if schedulable(n)), None)
    if node is None:
        pytest.fail("the real cluster has no Ready node without NoSchedule/NoExecute taints")
    name = node.metadata.name
    cluster.core.patch_node(name, {"metadata": {"labels": {GROUP_LABEL: TEST_GROUP}}})
    cluster.undo.append(lambda: cluster.core.patch_node(name, {"metadata": {"labels": {GROUP_LABEL: None}}}))


@pytest.fixture
def real(tmp_path, monkeypatch):
    """The real cluster with the CRD, a node group and the operator; everything added is removed."""
    if not Path(REAL_KUBECONFIG).is_file():
        pytest.fail(f"CLUSTEROUS_REAL_KUBECONFIG={REAL_KUBECONFIG}: no such file")
    kubeconfig = flattened(REAL_KUBECONFIG, tmp_path / "real-kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))  # the operator's login
    monkeypatch.setenv("CLUSTEROUS_RESYNC_SECONDS", "2")
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    cluster = RealCluster(kubeconfig, api)
    extensions = kubernetes.client.ApiextensionsV1Api(api)
    try:
        if not_found(lambda: extensions.read_custom_resource_definition(CRD_NAME)):
            cluster.kubectl("apply", "-f", str(CRD_FILE))
            cluster.undo.append(lambda: cluster.kubectl("delete", "crd", CRD_NAME, "--wait=true"))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
        _choose_group(cluster)
        in_cluster = not not_found(
            lambda: cluster.apps.read_namespaced_deployment("clusterous-operator", "clusterous-system")
        )
        with contextlib.ExitStack() as stack:
            runner = None
            if not in_cluster:
                runner = stack.enter_context(kopf_testing.KopfRunner(OPERATOR_ARGS, timeout=120))
            yield cluster
            # ClusterApps go while the operator still runs: its finalizer must be removed by it.
            for name in cluster.app_names:
                cluster.kubectl(
                    "delete", "clusterapp", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=false"
                )
                wait(lambda name=name: cluster.clusterapp(name) is None, f"ClusterApp {name} to go", 120)
        if runner is not None:
            assert runner.exception is None, runner.output
    finally:
        for step in reversed(cluster.undo):
            with contextlib.suppress(Exception):
                step()
        api.close()


def clusterapp(name: str, group: str, port: int = 8080) -> dict:
    return {
        "apiVersion": "clusterous.io/v1alpha1",
        "kind": "ClusterApp",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"clusterous.io/test": "realcluster"}},
        "spec": {
            "components": [
                {
                    "name": "web", "group": group, "image": IMAGE, "replicas": 1, "cpu": "0.1",
                    "command": ["python3", "-m", "http.server", str(port), "--directory", "/home/data"],
                    "ports": [port],
                },
                {
                    "name": "engine", "group": group, "image": IMAGE, "replicas": 2, "cpu": "0.1",
                    "command": ["sleep", "infinity"], "dependsOn": ["web"],
                },
            ],
            "sharedVolume": {"mountPath": "/home/data"},
        },
    }  # fmt: skip


def test_operator_takes_a_clusterapp_to_running_with_real_pods(real) -> None:
    name = f"rt-{uuid.uuid4().hex[:6]}"
    real.shared_volume_for(name)
    real.kubectl("apply", "-f", "-", input=yaml.safe_dump(clusterapp(name, real.group)))

    # The cluster's Deployment controller and kubelets report readiness; the operator follows.
    wait(lambda: real.available(f"{name}-web") == 1, f"{name}-web available")
    wait(lambda: real.available(f"{name}-engine") == 2, f"{name}-engine available (after web)")
    status = wait(
        lambda: (
            ((real.clusterapp(name) or {}).get("status") or {}).get("phase") == "Running"
            and real.clusterapp(name)["status"]
        ),
        f"ClusterApp {name} Running",
    )
    assert status["ready"] == "3/3", status
    assert {(c["name"], c["ready"], c["desired"]) for c in status["components"]} == {
        ("web", 1, 1),
        ("engine", 2, 2),
    }
    pods = real.pods(name)
    assert len(pods) == 3 and all(p.status.phase == "Running" for p in pods)
    for pod in pods:
        node = real.core.read_node(pod.spec.node_name)
        assert node.metadata.labels[GROUP_LABEL] == real.group  # placed by the real scheduler
    assert (
        real.core.read_namespaced_persistent_volume_claim(f"{name}-shared", NAMESPACE).status.phase == "Bound"
    )

    real.kubectl("delete", "clusterapp", name, "-n", NAMESPACE, "--wait=false")
    wait(
        lambda: real.clusterapp(name) is None and real.children_gone(name),
        f"{name} and its objects to go",
        180,
    )


@contextlib.contextmanager
def relay_to(host: str, port: int):
    """127.0.0.1:<port> forwarding to host:port, for an API server that is not on loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((host, port), timeout=30)
            upstream.settimeout(None)
            splice(client, upstream)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


@pytest.fixture
def controller_for(real, sshd):
    """The harness sshd as the real cluster's controller: its k3s.yaml is the real kubeconfig."""
    server = urlsplit(yaml.safe_load(real.kubeconfig.read_text())["clusters"][0]["cluster"]["server"])
    with contextlib.ExitStack() as stack:
        if server.hostname in ("127.0.0.1", "localhost", "::1"):
            api_port = server.port or 443
        else:
            api_port = stack.enter_context(relay_to(server.hostname, server.port or 443))
        made = make_controller(sshd, api_port=api_port, k3s_kubeconfig=str(real.kubeconfig))
        try:
            yield made
        finally:
            tunnels.stop_supervisor(made.ref)


def test_run_and_quit_an_application_on_the_real_cluster(real, controller_for, cli, tmp_path) -> None:
    name = f"rt-{uuid.uuid4().hex[:6]}"
    real.shared_volume_for(name)
    folder = tmp_path / "app"
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / "hello.txt").write_text("hello from run\n")
    env = {
        "name": name,
        "environment": {
            "copy": ["scripts/"],
            "components": {
                "web": {"machine": real.group, "cpu": 0.1, "image": IMAGE, "ports": "8080",
                        "cmd": "python3 -m http.server 8080 --directory /home/data"},
                "engine": {"machine": real.group, "cpu": 0.1, "count": 2, "image": IMAGE,
                           "cmd": "sleep infinity", "depends": "web"},
            },
        },
    }  # fmt: skip
    path = folder / f"{name}-env.yml"
    path.write_text(yaml.safe_dump(env, sort_keys=False))

    result = cli(["run", str(path), "--timeout", str(int(READY_TIMEOUT))])
    assert result.exit_code == 0, result.output
    assert f"{name}: Running" in result.stderr
    assert (controller_for.shared / "scripts" / "hello.txt").read_text() == "hello from run\n"
    # What `run` reported is what the cluster's own controllers say.
    assert real.available(f"{name}-web") == 1 and real.available(f"{name}-engine") == 2
    assert real.clusterapp(name)["status"]["phase"] == "Running"
    # The API was reached through the SSH tunnel to the controller, not directly.
    assert tunnels.read_desired(controller_for.ref).api_local

    quit_ = cli(["quit", name])
    assert quit_.exit_code == 0, quit_.output
    wait(
        lambda: real.clusterapp(name) is None and real.children_gone(name),
        f"{name} and its objects to go",
        180,
    )
    assert (controller_for.shared / "scripts" / "hello.txt").exists()  # the shared volume stays
