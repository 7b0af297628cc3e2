"""Shared fixtures of the SSH tests: a cluster record whose controller is the harness sshd.

`controller` writes what `up` would leave behind — a profile whose current cluster is `lab`,
`controller.yml` pointing at the sshd, and the host key pinned from the sshd's console output —
and stops the tunnel supervisor at teardown, whatever the test did.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clusterous_cli import config, hostkeys, tunnels
from clusterous_cli.endpoint import ClusterRef, ControllerEndpoint, write_endpoint
from tests.harness.sshd import SshServer

CLUSTER = "lab"


@dataclass
class Controller:
    sshd: SshServer
    ref: ClusterRef
    endpoint: ControllerEndpoint
    shared: Path


# k3s's built-in HelmChart CRD (its helm-controller serves it), for tests that apply HelmCharts.
HELMCHART_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "helmcharts.helm.cattle.io"},
    "spec": {
        "group": "helm.cattle.io",
        "scope": "Namespaced",
        "names": {"plural": "helmcharts", "singular": "helmchart", "kind": "HelmChart"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


def write_k3s_yaml(path: Path, token: str = "test-token") -> Path:
    """The stand-in for the controller's /etc/rancher/k3s/k3s.yaml (0600, as k3s writes it).

    k3s's says https; the emulator behind the tunnel speaks plain HTTP on the same port.
    """
    import yaml

    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "default", "cluster": {"server": "http://127.0.0.1:6443"}}],
                "users": [{"name": "default", "user": {"token": token}}],
                "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
                "current-context": "default",
            }
        )
    )
    path.chmod(0o600)
    return path


def make_controller(sshd: SshServer, shared_root: Path | None = None, **overrides) -> Controller:
    config.save_profile(
        "default", config.Profile(region="eu-west-1", bucket="clusterous-test", current_cluster=CLUSTER)
    )
    ref = ClusterRef("default", CLUSTER, config.cluster_dir("default", CLUSTER))
    shared = shared_root or sshd.make_shared_volume("shared")
    fields = {
        "host": sshd.host,
        "port": sshd.port,
        "user": sshd.user,
        "key_file": sshd.client_key_path,
        "known_hosts": ref.directory / "known_hosts",
        "shared_root": str(shared),
    } | overrides
    endpoint = ControllerEndpoint(**fields)
    write_endpoint(ref, endpoint)
    hostkeys.pin_from_console_output(endpoint.known_hosts, endpoint.host_key_name, sshd.console_output())
    return Controller(sshd, ref, endpoint, shared)


@pytest.fixture
def controller(sshd: SshServer) -> Iterator[Controller]:
    made = make_controller(sshd)
    try:
        yield made
    finally:
        tunnels.stop_supervisor(made.ref)


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP echo service standing for an app behind the controller."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        conn.settimeout(None)
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


def echo_roundtrip(port: int, payload: bytes, timeout: float = 20.0) -> bytes:
    """Send payload to localhost:port, half-close, and read everything back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        received = bytearray()

        def send() -> None:
            # The far end may close first (a refused target): then the reply is what is tested.
            with contextlib.suppress(OSError):
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while chunk := conn.recv(65536):
            received += chunk
        sender.join()
    return bytes(received)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def splice(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways between two connected sockets, each way in its own daemon thread,
    passing on each end-of-stream (a TCP relay's core)."""

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    threading.Thread(target=pipe, args=(a, b), daemon=True).start()
    threading.Thread(target=pipe, args=(b, a), daemon=True).start()
