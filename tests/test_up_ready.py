"""`up` waits for the cluster inside its instances; `rm-nodes` drains nodes before terminating them.

What stands in for what (docs/provisioning.md, "Readiness"):
- AWS is the moto server. moto's GetConsoleOutput holds no SSH host keys, so the console text is
  the one AWS response the tests supply themselves (tests/console_output_plugin.py): the harness
  sshd's cloud-init output, keys and fingerprints of its real host key.
- The controller is the harness sshd. `up` records the controller from what EC2 says: its
  public address is the sshd's (tests/controller_address_plugin.py, like the console text);
  what a user may set by hand in controller.yml and `up` keeps (port, login user, API port,
  k3s.yaml) is written there before `up`, as a user reaching the controller through a port
  forward would; the sshd's sessions see CLUSTEROUS_ROOT, the controller's filesystem root
  the bootstrap scripts and readiness probes read, pointing at stand-in cloud-init files.
- k3s is the Kubernetes API emulator behind the SSH tunnel. What k3s, the kubelets and the
  controllers would do, `FakeK3s` does from a background thread: it applies the add-on
  manifests found in the controller's real user-data (as k3s's auto-deploy does), registers a
  Node for every running instance (address, group label; tests choose a NotReady group or a
  controller too small). The emulator's own controllers, scheduler and kubelet run the pods.
  A node's agent joins only as k3s' does with a `K10<hash>::` token: its hash comes from its own
  instance tag through IMDS (so only with tags in metadata enabled) and must be the SHA-256 of
  the CA bundle the controller serves (k3s' hashCA of a one-certificate bundle: its bytes), a
  real self-signed certificate below the sshd's folder where k3s keeps it.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit

import kmock
import pytest
import yaml

from clusterous_cli import config, hostkeys, tunnels
from clusterous_cli.endpoint import ClusterRef
from tests import console_output_plugin, controller_address_plugin
from tests.addons_support import create_documents
from tests.harness import faults
from tests.harness.certs import make_cert, pem
from tests.harness.k8s import api_error
from tests.ssh_support import HELMCHART_CRD, write_k3s_yaml

CLUSTER = "ready"
SSH_CIDR = "198.51.100.7/32"
UP = ["up", "--cluster", CLUSTER, "--ssh-cidr", SSH_CIDR, "--yes"]  # the default OS: Ubuntu 24.04
ADDONS_FILE = "/var/lib/rancher/k3s/server/manifests/clusterous-addons.yaml"
CA_FILE = "var/lib/rancher/k3s/server/tls/server-ca.crt"  # below the controller's root
CA_HASH_TAG = "clusterous:k3s-ca-hash"


def self_signed_ca() -> bytes:
    """A CA like the one k3s makes at its first start (ECDSA P-256, CN k3s-server-ca@<time>), PEM."""
    cert, _ = make_cert("k3s-server-ca@1735689600", key_ids=False)
    return pem(cert)


def _tags(instance: dict) -> dict:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def node_name(instance: dict) -> str:
    return "ip-" + instance["PrivateIpAddress"].replace(".", "-")


class FakeK3s:
    """k3s's auto-deploy and each instance's kubelet registering its Node, for one cluster."""

    def __init__(self, aws, k8s_api, ca_file: Path, cluster: str = CLUSTER):
        self.aws, self.api, self.cluster, self.ca_file = aws, k8s_api, cluster, ca_file
        self.not_ready_groups: set[str] = set()  # their kubelets report NotReady
        self.controller_cpu = "2"  # what the controller's kubelet reports allocatable
        self.on_addons = None  # called once after the add-ons are applied
        self.applied = False
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeK3s:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        import boto3
        from botocore import plugin

        plugin.set_plugin_context(plugin.PluginContext(plugins="DISABLED"))  # keep aws.calls() ours
        ec2 = boto3.client("ec2", region_name=self.aws.region, endpoint_url=self.aws.url)
        while not self._stop.is_set():
            try:
                self.step(ec2)
            except Exception as exc:  # noqa: BLE001 - reported by the fixture
                self.errors.append(exc)
            self._stop.wait(0.1)

    def instances(self, ec2) -> list[dict]:
        flt = [
            {"Name": "tag:clusterous:cluster", "Values": [self.cluster]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
        return [i for r in ec2.describe_instances(Filters=flt)["Reservations"] for i in r["Instances"]]

    def step(self, ec2) -> None:
        instances = self.instances(ec2)
        controller = next((i for i in instances if _tags(i).get("clusterous:role") == "controller"), None)
        if controller is None:
            return
        if not self.applied:
            self.apply_addons(ec2, controller["InstanceId"])
            self.applied = True
            if self.on_addons:
                self.on_addons(self.api)
        names = {n["metadata"]["name"] for n in self.api.list("v1/nodes")}
        for instance in instances:
            if node_name(instance) not in names and self.joins(instance):
                try:
                    self.register(instance)
                except kmock.KubernetesError as exc:
                    if exc.status != 404:
                        raise  # 404: the Node was deleted while registering (rm-nodes, the
                        # autoscaler); like a kubelet, the next round registers it again

    def joins(self, instance: dict) -> bool:
        """The server registers itself; an agent only once its token's hash (its own tag, read
        through IMDS) matches the CA bundle the server serves at /cacerts."""
        tags = _tags(instance)
        if "clusterous:group" not in tags:
            return True
        if (instance.get("MetadataOptions") or {}).get("InstanceMetadataTags") != "enabled":
            return False  # IMDS answers 404 for every tag
        served = self.ca_file.read_bytes() if self.ca_file.exists() else b""
        return bool(served) and tags.get(CA_HASH_TAG) == hashlib.sha256(served).hexdigest()

    def apply_addons(self, ec2, controller_id: str) -> None:
        """What k3s's auto-deploy does with the add-ons file the controller's user-data writes."""
        raw = ec2.describe_instance_attribute(InstanceId=controller_id, Attribute="userData")["UserData"][
            "Value"
        ]
        user_data = base64.b64decode(raw).decode() if not raw.startswith("#cloud-config") else raw
        files = yaml.safe_load(user_data)["write_files"]
        entry = next(f for f in files if f["path"] == ADDONS_FILE)
        text = gzip.decompress(base64.b64decode(entry["content"])).decode()
        create_documents(self.api, text)

    def register(self, instance: dict) -> None:
        """What a kubelet does when k3s starts on the instance."""
        tags = _tags(instance)
        group = tags.get("clusterous:group")
        if group is None:
            labels, taints = {"node-role.kubernetes.io/control-plane": "true"}, None
            taints = [{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}]
        else:
            labels, taints = {"clusterous.io/group": group}, None
        name = node_name(instance)
        cpu = self.controller_cpu if group is None else "2"
        status = self.api.add_node(
            name, labels=labels, taints=taints, cpu=cpu, ready=group not in self.not_ready_groups
        )
        status = status["status"]
        if group in self.not_ready_groups:
            status["conditions"] = [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "KubeletNotReady",
                    "message": "container runtime network not ready: cni plugin not initialized",
                }
            ]
        status["addresses"] = [
            {"type": "InternalIP", "address": instance["PrivateIpAddress"]},
            {"type": "Hostname", "address": name},
        ]
        self.api.write_status("v1/nodes", name, status)


@pytest.fixture
def cluster_side(aws, sshd, k8s_api, monkeypatch, tmp_path):
    """Profile with the sshd's key pair, its hand-set controller.yml, stand-in files, console text, k3s."""
    ec2 = aws.client("ec2")
    ec2.import_key_pair(KeyName="lab", PublicKeyMaterial=Path(f"{sshd.client_key_path}.pub").read_bytes())
    config.save_profile(
        "default",
        config.Profile(
            region=aws.region,
            bucket="clusterous-ready-test",
            key_name="lab",
            key_file=str(sshd.client_key_path),
        ),
    )
    root = sshd.workdir / "root"
    for path, text in (
        ("var/lib/cloud/instance/boot-finished", "12.5 - Wed, 01 Jan 2025 00:00:12 +0000 - v. 24.4\n"),
        ("var/lib/cloud/data/result.json", json.dumps({"v1": {"datasource": "DataSourceEc2", "errors": []}})),
        ("var/log/cloud-init-output.log", "Cloud-init v. 24.4 running 'modules:final'\ncontroller ready\n"),
        ("var/lib/clusterous/bootstrap.done", "2025-01-01T00:00:40Z\n"),  # controller.sh succeeded
        (CA_FILE, self_signed_ca().decode()),  # what k3s made at its first start
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    sshd.set_environment(CLUSTEROUS_ROOT=str(root))
    k3s_yaml = write_k3s_yaml(sshd.workdir / "k3s.yaml", "k3s-admin-token")
    hand_set = {
        "port": sshd.port,
        "user": sshd.user,
        "api_port": urlsplit(k8s_api.url).port,
        "k3s_kubeconfig": str(k3s_yaml),
    }
    config.write_private(cluster_ref().controller_file, yaml.safe_dump(hand_set))
    monkeypatch.setenv(controller_address_plugin.ENV_ADDRESS, sshd.host)
    console = tmp_path / "console-output.txt"
    console.write_text(sshd.console_output())
    monkeypatch.setenv(console_output_plugin.ENV_FILE, str(console))
    plugins = (faults.PLUGIN_SPEC, console_output_plugin.PLUGIN_SPEC, controller_address_plugin.PLUGIN_SPEC)
    monkeypatch.setenv("BOTOCORE_EXPERIMENTAL__PLUGINS", ",".join(plugins))
    k8s_api.call(lambda emulator: emulator["get /readyz"] << b"ok")
    k8s_api.create("apiextensions.k8s.io/v1/customresourcedefinitions", HELMCHART_CRD)
    ref = ClusterRef("default", CLUSTER, config.cluster_dir("default", CLUSTER))
    with FakeK3s(aws, k8s_api, root / CA_FILE) as k3s:
        try:
            yield k3s
        finally:
            tunnels.stop_supervisor(ref)
    assert not k3s.errors, k3s.errors


def cluster_ref() -> ClusterRef:
    return ClusterRef("default", CLUSTER, config.cluster_dir("default", CLUSTER))


def test_up_waits_for_every_stage_and_records_the_controller(cluster_side, aws, sshd, k8s_api, cli) -> None:
    result = cli([*UP, "--workers", "2", "--timeout", "30", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["in_cluster_ready"] is True
    for stage in (
        "host key",
        "SSH to the controller",
        "cloud-init",
        "bootstrap (NFS server, k3s)",
        "/readyz ok",
        "operator code",
        "4/4 nodes Ready",
    ):
        assert stage in result.stderr, stage
    assert "not implemented" not in result.output
    assert aws.calls("GetConsoleOutput")

    ref = cluster_ref()
    # pinned under the instance id (HostKeyAlias), not the address: a new address needs no relearn
    pinned = hostkeys.read_pinned(ref.directory / "known_hosts", data["controller"]["instance_id"])
    assert [k.fingerprint for k in pinned] == [sshd.host_key_fingerprint]
    record = yaml.safe_load(ref.controller_file.read_text())
    controller = next(
        i
        for r in aws.client("ec2").describe_instances(InstanceIds=[data["controller"]["instance_id"]])[
            "Reservations"
        ]
        for i in r["Instances"]
    )
    assert record["instance_id"] == controller["InstanceId"] and record["region"] == aws.region
    assert record["key_file"] == str(sshd.client_key_path)
    assert ref.controller_file.stat().st_mode & 0o777 == 0o600
    code = k8s_api.get("v1/configmaps", "clusterous-operator-code", "clusterous-system")
    assert code and code["binaryData"]["clusterous_operator.zip"]
    assert data["readiness"]["operator_code"] == "created" and data["readiness"]["logging_level"] == 0
    assert k8s_api.get("helm.cattle.io/v1/helmcharts", "clusterous-logging", "kube-system") is None

    again = cli([*UP, "--workers", "2", "--timeout", "30"])  # converged: nothing new, the same pin
    assert again.exit_code == 0, again.output
    assert "pinned earlier" in again.stderr and "operator code unchanged" in again.stderr
    assert f"cluster {CLUSTER} is ready" in again.stdout


def _instances(aws) -> list[dict]:
    flt = [{"Name": "tag:clusterous:cluster", "Values": [CLUSTER]}]
    return [
        i for r in aws.client("ec2").describe_instances(Filters=flt)["Reservations"] for i in r["Instances"]
    ]


def test_up_tags_every_instance_with_the_hash_of_the_ca_the_controller_serves(
    cluster_side, aws, sshd, cli
) -> None:
    """Nodes join with K10<hash>::node:<agent token>; the hash reaches them as their own tag."""
    aws.realism.imds_tag_keys()  # every tag key we put on instances must be one IMDS can show
    served = (sshd.workdir / "root" / CA_FILE).read_bytes()
    digest = hashlib.sha256(served).hexdigest()
    result = cli([*UP, "--workers", "3", "--timeout", "30"])
    assert result.exit_code == 0, result.output
    assert f"sha256 {digest[:12]}…, 5 instance(s) tagged now" in result.stderr
    instances = _instances(aws)
    assert len(instances) == 5
    for instance in instances:
        assert _tags(instance)[CA_HASH_TAG] == digest
        assert instance["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    assert len(aws.calls("CreateTags")) == 1  # every instance in one call

    # a node that lost its tag (or a CA that changed) is put right by the next `up`, and only it
    worker = next(i for i in instances if _tags(i).get("clusterous:group") == "worker")
    aws.client("ec2").delete_tags(Resources=[worker["InstanceId"]], Tags=[{"Key": CA_HASH_TAG}])
    aws.reset_calls()
    again = cli([*UP, "--workers", "3", "--timeout", "30"])
    assert again.exit_code == 0, again.output
    assert "1 instance(s) tagged now" in again.stderr and len(aws.calls("CreateTags")) == 1
    assert all(_tags(i)[CA_HASH_TAG] == digest for i in _instances(aws))

    # scale and add-nodes launch with the controller's hash: their nodes join without an `up`
    aws.reset_calls()
    assert cli(["add-nodes", "1", "--yes"]).exit_code == 0
    assert cli(["scale", "master", "2", "--yes"]).exit_code == 0
    assert aws.calls("CreateTags") == []
    new = [i for i in _instances(aws) if i["InstanceId"] not in {j["InstanceId"] for j in instances}]
    assert len(new) == 2 and all(_tags(i)[CA_HASH_TAG] == digest for i in new)
    assert not aws.realism.injected("RunInstances") and not aws.realism.injected("CreateTags")
    names = {node_name(i) for i in new}
    cluster_side.api.wait_for(
        lambda: names <= {n["metadata"]["name"] for n in cluster_side.api.list("v1/nodes")},
        15,
        "the added nodes registered",
    )


def test_without_the_ca_hash_no_node_joins_and_up_says_what_it_waits_for(cluster_side, sshd, cli) -> None:
    (sshd.workdir / "root" / CA_FILE).unlink()  # k3s has not started yet
    result = cli([*UP, "--workers", "1", "--timeout", "3"])
    assert result.exit_code == 1, result.output
    assert "timed out after 3 s waiting for the k3s CA's hash nodes join with" in result.stderr
    assert "k3s has not written its CA (/var/lib/rancher/k3s/server/tls/server-ca.crt) yet" in result.stderr


def test_a_node_that_never_gets_ready_is_named_and_exit_is_1(cluster_side, cli) -> None:
    cluster_side.not_ready_groups.add("worker")
    result = cli([*UP, "--workers", "1", "--timeout", "3"])
    assert result.exit_code == 1, result.output
    assert "timed out after 3 s waiting for every node Ready with its group label" in result.stderr
    assert re.search(
        r"node ip-10-20-16-\d+ \(group worker, i-[0-9a-f]+\): not Ready \(KubeletNotReady: container runtime",
        result.stderr,
    )
    assert "re-run `clusterous-k8s up`" in result.stderr
    assert "Traceback" not in result.output


def test_a_pending_pod_is_named_with_its_events(cluster_side, cli) -> None:
    cluster_side.controller_cpu = "40m"  # the registry asks for 50m: the scheduler finds no room
    result = cli([*UP, "--workers", "0", "--timeout", "3"])
    assert result.exit_code == 1, result.output
    assert "Deployment clusterous-system/registry: 0/1 replicas available" in result.stderr
    message = (
        "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector."
    )
    assert re.search(
        rf"pod registry-\w+-\w+: Pending; PodScheduled: Unschedulable: {re.escape(message)}", result.stderr
    )
    assert f"Warning FailedScheduling: {message}" in result.stderr


def test_selector_of_the_registry_matches_the_pending_pod_labels() -> None:
    """The registry's pods are found by its Deployment's selector."""
    text = (Path(__file__).resolve().parents[1] / "manifests" / "registry.yaml").read_text()
    deployment = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "registry"}


def test_a_changed_host_key_is_refused(cluster_side, sshd, cli) -> None:
    assert cli([*UP, "--workers", "0", "--timeout", "30"]).exit_code == 0
    ref = cluster_ref()
    before = (ref.directory / "known_hosts").read_text()
    tunnels.stop_supervisor(ref)
    sshd.rotate_host_key()
    result = cli([*UP, "--workers", "0", "--timeout", "30"])
    assert result.exit_code == 1, result.output
    assert "has CHANGED" in result.stderr and "host-key --relearn" in result.stderr
    assert (ref.directory / "known_hosts").read_text() == before


def test_console_output_without_host_keys_times_out_naming_the_controller(
    cluster_side, cli, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv(console_output_plugin.ENV_FILE, str(tmp_path / "not-posted-yet"))
    result = cli([*UP, "--workers", "0", "--timeout", "2"])
    assert result.exit_code == 1
    assert "waiting for the controller's SSH host key" in result.stderr
    assert re.search(r"controller i-[0-9a-f]+: no console output yet", result.stderr)
    assert not (cluster_ref().directory / "known_hosts").exists()


def test_a_failed_cloud_init_shows_the_end_of_its_log(cluster_side, sshd, cli) -> None:
    root = sshd.workdir / "root"
    (root / "var/lib/cloud/data/result.json").write_text(
        json.dumps(
            {"v1": {"errors": ["('scripts_user', RuntimeError('Runparts: 1 failures (controller.sh)'))"]}}
        )
    )
    (root / "var/log/cloud-init-output.log").write_text(
        "installing k3s\ncurl: (6) Could not resolve host: get.k3s.io\n"
    )
    result = cli([*UP, "--workers", "0", "--timeout", "5"])
    assert result.exit_code == 1
    assert "cloud-init failed on the controller" in result.stderr and "controller.sh" in result.stderr
    assert "Could not resolve host: get.k3s.io" in result.stderr


def test_up_waits_for_the_bootstrap_unit_not_only_cloud_init(cluster_side, sshd, cli) -> None:
    """cloud-init only starts clusterous-bootstrap.service; a run still retrying is not ready."""
    marker = sshd.workdir / "root" / "var/lib/clusterous/bootstrap.done"
    marker.unlink()
    result = cli([*UP, "--workers", "0", "--timeout", "3"])
    assert result.exit_code == 1
    assert "waiting for the controller's bootstrap (NFS server, k3s)" in result.stderr
    assert "clusterous-bootstrap.service retries until it succeeds" in result.stderr
    marker.write_text("2025-01-01T00:10:00Z\n")
    assert cli([*UP, "--workers", "0", "--timeout", "30"]).exit_code == 0


def test_logging_level_is_applied_kept_and_removed_by_rerunning_up(cluster_side, k8s_api, cli) -> None:
    def helmchart():
        return k8s_api.get("helm.cattle.io/v1/helmcharts", "clusterous-logging", "kube-system")

    def recorded():
        return k8s_api.get("v1/configmaps", "cluster-info", "clusterous-system")["data"]["loggingLevel"]

    assert cli([*UP, "--workers", "0", "--timeout", "30", "--logging-level", "1"]).exit_code == 0
    assert helmchart()["metadata"]["annotations"]["clusterous.io/logging-level"] == "1" and recorded() == "1"

    kept = cli([*UP, "--workers", "0", "--timeout", "30"])  # no level asked: the cluster keeps its own
    assert kept.exit_code == 0, kept.output
    assert "logging level 1 (unchanged)" in kept.stderr and recorded() == "1"

    raised = cli([*UP, "--workers", "0", "--timeout", "30", "--logging-level", "2"])
    assert raised.exit_code == 0 and "logging level 2 (updated)" in raised.stderr
    assert helmchart()["metadata"]["annotations"]["clusterous.io/logging-level"] == "2" and recorded() == "2"

    off = cli([*UP, "--workers", "0", "--timeout", "30", "--logging-level", "0"])
    assert off.exit_code == 0, off.output
    assert helmchart() is None and recorded() == "0" and "logging level 0 (removed)" in off.stderr


# --- drain on shrink ---------------------------------------------------------------------------


def _running_workers(aws) -> dict[str, dict]:
    flt = [
        {"Name": "tag:clusterous:cluster", "Values": [CLUSTER]},
        {"Name": "tag:clusterous:group", "Values": ["worker"]},
        {"Name": "instance-state-name", "Values": ["running", "pending"]},
    ]
    reply = aws.client("ec2").describe_instances(Filters=flt)
    return {i["InstanceId"]: i for r in reply["Reservations"] for i in r["Instances"]}


def _workloads_on_every_worker(k8s_api, workers: int) -> None:
    """An app with one pod per worker (each takes most of a 2-CPU node) and a DaemonSet."""
    labels = {"app": "app"}
    container = {"name": "c", "image": "busybox:1.37", "resources": {"requests": {"cpu": "1500m"}}}
    pod_spec = {"nodeSelector": {"clusterous.io/group": "worker"}, "containers": [container]}
    app = {
        "metadata": {"name": "app"},
        "spec": {
            "replicas": workers,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    k8s_api.create("apps/v1/deployments", app, "default")
    nfs_labels = {"app": "nfs"}
    nfs_pod = {"containers": [{"name": "n", "image": "registry.k8s.io/sig-storage/nfsplugin:v4.9.0"}]}
    nfs = {
        "metadata": {"name": "nfs"},
        "spec": {
            "selector": {"matchLabels": nfs_labels},
            "template": {"metadata": {"labels": nfs_labels}, "spec": nfs_pod},
        },
    }
    k8s_api.create("apps/v1/daemonsets", nfs, "default")

    def running() -> bool:
        app_status = k8s_api.get("apps/v1/deployments", "app", "default").get("status") or {}
        nfs_status = k8s_api.get("apps/v1/daemonsets", "nfs", "default").get("status") or {}
        return app_status.get("availableReplicas") == workers and nfs_status.get("numberReady") == workers + 1

    k8s_api.wait_for(running, 15, "an app pod on every worker and the DaemonSet on every node")


def _pod_on(k8s_api, app: str, node: str) -> str | None:
    for pod in k8s_api.list("v1/pods", "default"):
        if pod["metadata"]["labels"].get("app") == app and pod["spec"].get("nodeName") == node:
            return pod["metadata"]["name"]
    return None


def test_rm_nodes_drains_then_terminates(cluster_side, aws, k8s_api, cli) -> None:
    assert cli([*UP, "--workers", "3", "--timeout", "30"]).exit_code == 0
    workers = _running_workers(aws)
    _workloads_on_every_worker(k8s_api, len(workers))
    on_node = {
        node_name(i): (_pod_on(k8s_api, "app", node_name(i)), _pod_on(k8s_api, "nfs", node_name(i)))
        for i in workers.values()
    }
    terminations_at_node_delete: list[int] = []

    def record_node_delete(request):
        terminations_at_node_delete.append(len(aws.calls("TerminateInstances")))
        raise NotImplementedError  # fall through to the emulator, which deletes the Node

    k8s_api.call(
        lambda emulator: emulator["delete", re.compile(r".*/api/v1/nodes/[^/]+$")] << record_node_delete
    )

    # 1. An API server without the Eviction API (404 for the endpoint): pods are deleted instead.
    no_eviction = api_error(404, "NotFound", "the server could not find the requested resource")
    reaction = k8s_api.call(
        lambda emulator: emulator["post", re.compile(r".*/pods/[^/]+/eviction$")] << no_eviction
    )
    aws.reset_calls()
    first = cli(["rm-nodes", "1", "--yes", "--json"])
    assert first.exit_code == 0, first.output
    (gone,) = json.loads(first.stdout)["removed"]
    node = node_name(workers[gone])
    app_pod, nfs_pod = on_node[node]
    history = k8s_api.history("v1/nodes", node)
    assert history[-1] is None  # deleted
    # cordoned before it was deleted (FakeK3s, like a kubelet, may re-register it until terminated)
    assert history[history.index(None) - 1]["spec"].get("unschedulable") is True
    assert k8s_api.get("v1/pods", app_pod, "default") is None
    assert f"deleted default/{app_pod}" in first.stderr
    assert nfs_pod not in first.stderr  # DaemonSet pods are left to go with their node
    # The drain deletes the Node before TerminateInstances; once terminated, the CLI deletes it
    # again in case the still-running kubelet re-registered it meanwhile (a 404 when it did not).
    assert terminations_at_node_delete == [0, 1] and len(aws.calls("TerminateInstances")) == 1
    for other in set(workers) - {gone}:
        assert not (k8s_api.get("v1/nodes", node_name(workers[other]))["spec"].get("unschedulable"))
        assert k8s_api.get("v1/pods", on_node[node_name(workers[other])][0], "default") is not None

    # 2. The Eviction API (the emulator's own), with a budget that still allows one disruption.
    k8s_api.call(lambda emulator: reaction._disabled.set())  # kmock: the reaction answers no more
    budget = {
        "metadata": {"name": "app"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "app"}}},
    }
    k8s_api.create("policy/v1/poddisruptionbudgets", budget, "default")
    k8s_api.wait_for(
        lambda: (
            (k8s_api.get("policy/v1/poddisruptionbudgets", "app", "default").get("status") or {}).get(
                "disruptionsAllowed"
            )
            == 1
        ),
        15,
        "the budget to allow one disruption",
    )
    aws.reset_calls()
    second = cli(["rm-nodes", "1", "--yes", "--json"])
    assert second.exit_code == 0, second.output
    (gone2,) = json.loads(second.stdout)["removed"]
    node2 = node_name(workers[gone2])
    assert f"evicted default/{on_node[node2][0]}" in second.stderr
    assert k8s_api.get("v1/pods", on_node[node2][0], "default") is None
    assert k8s_api.get("v1/nodes", node2) is None
    assert terminations_at_node_delete == [0, 1, 0, 1] and len(aws.calls("TerminateInstances")) == 1

    # 3. --force terminates without touching Kubernetes.
    (last,) = set(workers) - {gone, gone2}
    forced = cli(["rm-nodes", "1", "--yes", "--force"])
    assert forced.exit_code == 0, forced.output
    assert last not in _running_workers(aws)
    survivor = k8s_api.get("v1/nodes", node_name(workers[last]))
    assert survivor is not None and not survivor["spec"].get("unschedulable")


def test_rm_nodes_on_an_unreachable_cluster_needs_force(aws, cli) -> None:
    result = cli(["setup", "--region", aws.region, "--yes"])
    assert result.exit_code == 0, result.output
    assert cli([*UP, "--workers", "1", "--no-wait"]).exit_code == 0  # no host key learned yet
    before = set(_running_workers(aws))
    refused = cli(["rm-nodes", "1", "--yes"])
    assert refused.exit_code == 1
    assert "cannot be reached" in refused.stderr and "--force" in refused.stderr
    assert set(_running_workers(aws)) == before and not aws.calls("TerminateInstances")
    with contextlib.suppress(Exception):
        tunnels.stop_supervisor(cluster_ref())
    forced = cli(["rm-nodes", "1", "--yes", "--force"])
    assert forced.exit_code == 0, forced.output
    assert _running_workers(aws) == {}
