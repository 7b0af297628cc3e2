"""kubeconfig and component lookup through the API tunnel, against the Kubernetes API emulator.

The emulator (tests/harness/k8s.py) speaks plain HTTP on 127.0.0.1; the controller record's
api_port points the tunnel at it and a stand-in k3s.yaml on the "controller" holds the
credentials. `logs` and `connect` are exercised in test_connect_logs.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from clusterous_cli import tunnels
from tests.harness.k8s import require_kubectl
from tests.ssh_support import echo_roundtrip, echo_server, make_controller, write_k3s_yaml

SECRET_TOKEN = "s3cr3t-token-never-printed"


@pytest.fixture
def kube_controller(sshd, k8s_api, tmp_path):
    k3s_yaml = write_k3s_yaml(sshd.workdir / "k3s.yaml", SECRET_TOKEN)
    made = make_controller(sshd, api_port=urlsplit(k8s_api.url).port, k3s_kubeconfig=str(k3s_yaml))
    try:
        yield made
    finally:
        tunnels.stop_supervisor(made.ref)


def test_kubeconfig_merges_a_private_context_through_the_tunnel(
    kube_controller, k8s_api, cli, tmp_path, monkeypatch
):
    kubeconfig = tmp_path / "kube" / "config"
    kubeconfig.parent.mkdir()
    other = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "work", "cluster": {"server": "https://work.example:6443"}}],
        "users": [{"name": "work", "user": {"token": "work-token"}}],
        "contexts": [{"name": "work", "context": {"cluster": "work", "user": "work"}}],
        "current-context": "work",
    }
    kubeconfig.write_text(yaml.safe_dump(other))
    monkeypatch.setenv("KUBECONFIG", f"{kubeconfig}{os.pathsep}{tmp_path / 'second'}")

    result = cli(["kubeconfig"])
    assert result.exit_code == 0, result.output
    assert SECRET_TOKEN not in result.output
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "second").exists()
    merged = yaml.safe_load(kubeconfig.read_text())
    assert merged["current-context"] == "clusterous-lab"
    assert {c["name"] for c in merged["contexts"]} == {"work", "clusterous-lab"}
    server = next(c["cluster"]["server"] for c in merged["clusters"] if c["name"] == "clusterous-lab")
    api_port = tunnels.read_desired(kube_controller.ref).api_local
    assert server == f"http://127.0.0.1:{api_port}"
    assert tunnels.supervisor_pid(kube_controller.ref)

    k8s_api.add_node("controller-0")
    kubectl = subprocess.run(
        [str(require_kubectl()), "get", "nodes", "-o", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "KUBECACHEDIR": str(tmp_path / "cache")},
    )
    assert kubectl.returncode == 0, kubectl.stderr
    assert kubectl.stdout.split() == ["node/controller-0"]

    again = cli(["kubeconfig", "--no-switch", "--json"])
    assert again.exit_code == 0
    assert len(yaml.safe_load(kubeconfig.read_text())["contexts"]) == 2
    record = json.loads(again.stdout)
    assert record == {"context": "clusterous-lab", "kubeconfig": str(kubeconfig), "api_local_port": api_port}


def test_tunnel_add_resolves_a_component_to_its_service(kube_controller, k8s_api, cli):
    with echo_server() as echo_port:
        k8s_api.create(
            "v1/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "demo-master", "labels": {"clusterous.io/component": "master"}},
                # A real Service has a virtual ClusterIP; here the "controller" reaches the echo
                # service on loopback, so the ClusterIP is 127.0.0.1.
                "spec": {"clusterIP": "127.0.0.1", "ports": [{"port": echo_port}]},
            },
            namespace="default",
        )
        local = tunnels.free_port()
        added = cli(["tunnel", "add", f"{local}:master:{echo_port}"])
        assert added.exit_code == 0, added.output
        assert echo_roundtrip(local, b"through the component") == b"through the component"
        listed = cli(["tunnel", "ls", "--json"])
        assert f"{local}" in listed.stdout and '"master"' in listed.stdout

    missing = cli(["tunnel", "add", f"{tunnels.free_port()}:nosuch:80"])
    assert missing.exit_code == 1 and "no Service or running pod" in missing.output
