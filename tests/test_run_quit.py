"""`run` and `quit` end to end: files copied, ClusterApp applied, followed to Running, tunnel opened.

What stands in for what (docs/applications.md, "How run is tested"):
- the controller is the harness sshd; its shared volume a local folder (same machine, so a
  remote path is a local path and the test reads the copied files directly);
- the Kubernetes API is the emulator, reached the way a real run reaches k3s: through the SSH
  tunnel to the controller's loopback API port. The controller record's api_port is the
  emulator's port (sshd and emulator share 127.0.0.1) and a stand-in k3s.yaml holds the
  credentials the CLI fetches over SFTP;
- the operator is the real kopf operator (KopfRunner) against the emulator;
- the emulator's controllers schedule and run the pods on two Nodes through the StorageClasses
  k3s would have; every Service's cluster IP is 127.0.0.1, where the test's HTTP server
  listens on the component's port (the world a tunnel through the controller reaches);
- AWS is the moto server: `run` and `quit` must not call AWS at all.
BuildKit cannot run here (no containers): the env files of these tests have no `image:` section;
the build Job manifest is validated in test_build_job.py and the build path against a real
registry in test_registry.py.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import threading
import urllib.request
from urllib.parse import urlsplit

import pytest
import yaml

os.environ.setdefault("CLUSTEROUS_RESYNC_SECONDS", "0.5")

import kopf.testing as kopf_testing  # noqa: E402 - a broken kopf fails the module, never skips it

from clusterous_cli import apps, kubeapi, tunnels  # noqa: E402
from tests.addons_support import apply_storage_classes  # noqa: E402
from tests.ssh_support import make_controller, write_k3s_yaml  # noqa: E402

CRD = yaml.safe_load(
    (
        __import__("pathlib").Path(__file__).resolve().parents[1] / "operator/clusterous_operator/crd.yaml"
    ).read_text()
)
OPERATOR_ARGS = ["run", "--standalone", "--all-namespaces", "-m", "clusterous_operator.handlers"]


@contextlib.contextmanager
def web_server(body: bytes):
    """The component's web page, on the port the test gives the component."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cluster(sshd, k8s_api, aws, monkeypatch):
    """The harness controller with the API behind it, the CRD, two nodes and the operator running."""
    monkeypatch.setenv("KUBECONFIG", str(k8s_api.kubeconfig))  # the operator's own (in-cluster) access
    k8s_api.create("apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
    apply_storage_classes(k8s_api)
    k8s_api.call(lambda emulator: setattr(emulator, "service_address", "127.0.0.1"))
    k8s_api.add_node("master-1", labels={"clusterous.io/group": "master"}, cpu="2")
    k8s_api.add_node("worker-1", labels={"clusterous.io/group": "worker"}, cpu="2")
    k3s_yaml = write_k3s_yaml(sshd.workdir / "k3s.yaml", "test-token")
    made = make_controller(sshd, api_port=urlsplit(k8s_api.url).port, k3s_kubeconfig=str(k3s_yaml))
    aws.reset_calls()
    try:
        with kopf_testing.KopfRunner(OPERATOR_ARGS, timeout=60) as runner:
            yield made
        assert runner.exception is None, runner.output
    finally:
        tunnels.stop_supervisor(made.ref)


def env_file(tmp_path, web_port: int, local_port: int, **overrides) -> object:
    scripts = tmp_path / "app" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "serve.sh").write_text('#!/bin/sh\nexec python3 -m http.server "$1"\n')
    (scripts / "data").mkdir()
    (scripts / "data" / "input.csv").write_bytes(os.urandom(100_000))
    env = {
        "name": "webdemo",
        "environment": {
            "copy": ["scripts/"],
            "components": {
                "web": {
                    "machine": "master",
                    "cpu": 0.5,
                    "image": "python:3.12-slim",
                    "cmd": f"/bin/sh /home/data/scripts/serve.sh {web_port}",
                    "ports": str(web_port),
                },
                "engine": {
                    "machine": "worker",
                    "cpu": 1,
                    "count": "auto",
                    "depends": "web",
                    "image": "python:3.12-slim",
                    "cmd": "sleep infinity",
                },
            },
            "expose_tunnel": {
                "service": f"{local_port}:web:{web_port}",
                "message": "Open {url} (port {port})",
            },
        },
        **overrides,
    }
    path = tmp_path / "app" / "webdemo-env.yml"
    path.write_text(yaml.safe_dump(env, sort_keys=False))
    return path


def fetch(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as response:
        return response.read()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def test_run_copies_applies_follows_and_tunnels_then_quit_removes_it(
    cluster, k8s_api, aws, cli, tmp_path
) -> None:
    page = os.urandom(16).hex().encode()
    local = tunnels.free_port()
    with web_server(page) as web_port:
        path = env_file(tmp_path, web_port, local)
        result = cli(["run", str(path), "--timeout", "60"])
        assert result.exit_code == 0, result.output

        # Files copied to the shared volume, under the folder's name.
        copied = cluster.shared / "scripts"
        source = path.parent / "scripts"
        assert (copied / "data" / "input.csv").read_bytes() == (source / "data" / "input.csv").read_bytes()
        assert (copied / "serve.sh").read_text() == (source / "serve.sh").read_text()

        # The ClusterApp the converter describes, applied; the operator took it to Running.
        applied = k8s_api.get("capp", "webdemo")
        assert [c["name"] for c in applied["spec"]["components"]] == ["web", "engine"]
        assert applied["status"]["phase"] == "Running"
        assert "web: 1/1 Ready" in result.stderr and "webdemo: Running" in result.stderr

        # The tunnel is open and the message printed with {url} and {port} filled in.
        assert f"Open http://localhost:{local} (port {local})" in result.stdout
        assert fetch(local) == page

        # The API was reached through the SSH tunnel, not directly.
        api_local = tunnels.read_desired(cluster.ref).api_local
        server = yaml.safe_load((cluster.ref.directory / kubeapi.CREDENTIALS_FILE).read_text())["clusters"][0]
        assert urlsplit(server["cluster"]["server"]).port == api_local != urlsplit(k8s_api.url).port
        assert aws.calls() == []  # nothing in AWS is needed to run an application

        # status reports the application and its tunnel (the cluster exists in AWS: its VPC is tagged).
        aws.client("ec2", "eu-west-1").create_vpc(
            CidrBlock="10.20.0.0/16",
            TagSpecifications=[
                {"ResourceType": "vpc", "Tags": [{"Key": "clusterous:cluster", "Value": cluster.ref.cluster}]}
            ],
        )
        status = cli(["status", "--json"])
        assert status.exit_code == 0, status.output
        data = json.loads(status.stdout)
        assert [(a["name"], a["phase"], a["ready"]) for a in data["applications"]] == [
            ("webdemo", "Running", "3/3")
        ]
        assert {(c["name"], c["ready"], c["desired"]) for c in data["applications"][0]["components"]} == {
            ("web", 1, 1),
            ("engine", 2, 2),
        }
        assert [(t["local"], t["application"], t["state"]) for t in data["tunnels"]] == [
            (local, "webdemo", "up")
        ]
        table = cli(["status"])
        assert table.exit_code == 0 and "webdemo" in table.stdout and f"localhost:{local}" in table.stdout

        # Run again: nothing new to copy, same tunnel, same message.
        again = cli(["run", str(path), "--timeout", "60"])
        assert again.exit_code == 0, again.output
        assert "0 file(s) sent" in again.stderr and f"http://localhost:{local}" in again.stdout
        assert fetch(local) == page

        only = cli(["quit", "webdemo", "--tunnels-only"])
        assert only.exit_code == 0, only.output
        assert refused(local) and k8s_api.get("capp", "webdemo") is not None

        quit_ = cli(["quit"])  # the only application
        assert quit_.exit_code == 0, quit_.output
        assert k8s_api.get("capp", "webdemo") is None
        assert k8s_api.get("apps/v1/deployments", "webdemo-web") is None
        assert (copied / "data" / "input.csv").exists()  # the shared volume stays
        assert "kept" in quit_.stderr


def test_quit_closes_the_apps_tunnel(cluster, k8s_api, cli, tmp_path) -> None:
    local = tunnels.free_port()
    with web_server(b"hello") as web_port:
        assert cli(["run", str(env_file(tmp_path, web_port, local)), "--timeout", "60"]).exit_code == 0
        assert fetch(local) == b"hello"
        result = cli(["quit", "webdemo"])
        assert result.exit_code == 0, result.output
        assert refused(local)
        assert apps.read_record(cluster.ref) == {}
        assert [t.local for t in tunnels.read_desired(cluster.ref).tunnels] == []


@pytest.mark.parametrize(
    "override, field",
    [
        (
            {"environment": {"copy": ["missing/"], "components": {"a": {"machine": "m", "image": "x"}}}},
            "environment.copy[0]",
        ),
        (
            {
                "environment": {
                    "copy": ["scripts/"],
                    "components": {"a": {"machine": "m", "image": "x", "count": "$n"}},
                }
            },
            "$n",
        ),
    ],
)
def test_bad_input_copies_builds_and_applies_nothing(
    cluster, k8s_api, cli, tmp_path, override, field
) -> None:
    path = env_file(tmp_path, 8000, tunnels.free_port(), **override)
    result = cli(["run", str(path)])
    assert result.exit_code == 2, result.output
    assert str(path) in result.stderr and field in result.stderr
    assert list(cluster.shared.iterdir()) == []
    assert k8s_api.list("capp") == []
    assert tunnels.supervisor_pid(cluster.ref) is None  # not even the API tunnel was opened


def test_run_again_redoes_an_update_overtaken_by_the_operator(k8s_api) -> None:
    """The operator writes the app's status while `run` replaces its spec: a 409 is redone."""
    import kubernetes

    k8s_api.create("apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
    app = {
        "apiVersion": "clusterous.io/v1alpha1",
        "kind": "ClusterApp",
        "metadata": {"name": "webdemo"},
        "spec": {"components": [{"name": "web", "group": "master", "image": "python:3.12-slim"}]},
    }
    client = kubernetes.config.new_client_from_config(config_file=str(k8s_api.kubeconfig))
    try:
        assert apps.apply(client, app) == "created"
        app["spec"]["components"][0]["image"] = "python:3.13-slim"
        k8s_api.overtake_reads("capp", "webdemo", times=2)
        assert apps.apply(client, app) == "updated"
    finally:
        client.close()
    assert k8s_api.get("capp", "webdemo")["spec"]["components"][0]["image"] == "python:3.13-slim"
