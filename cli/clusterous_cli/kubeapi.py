"""The cluster's Kubernetes API, reached through the SSH tunnel with credentials read from the controller.

k3s writes its admin kubeconfig to /etc/rancher/k3s/k3s.yaml on the controller (mode 0600, owned
by root, so it is read with `sudo -n`) with `server: https://127.0.0.1:6443`; k3s's serving
certificate names 127.0.0.1, so TLS keeps being verified when the local end of our tunnel (127.0.0.1:<local port>) replaces the address. The
rewritten copy lives in the cluster's config directory (`kubeconfig.yml`, 0600); secrets in it
are never printed.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from clusterous_cli import tunnels
from clusterous_cli.endpoint import ClusterRef, load_endpoint
from clusterous_core.errors import Failure

CREDENTIALS_FILE = "kubeconfig.yml"
COMPONENT_LABEL = "clusterous.io/component"
RELEARN_OR_UP = "re-run `clusterous-k8s up` (it learns the key while waiting for the cluster)"
# `sh -c READ_AS_ROOT read-as-root FILE`: cat as root, through `sudo -n` unless already root.
READ_AS_ROOT = 'if [ "$(id -u)" -eq 0 ]; then exec cat -- "$1"; else exec sudo -n cat -- "$1"; fi'


def rewrite_server(kubeconfig: dict, local_port: int) -> dict:
    """Every cluster entry's server → 127.0.0.1:<local_port>, scheme and path kept."""
    for entry in kubeconfig.get("clusters") or []:
        cluster = entry.get("cluster") or {}
        parts = urlsplit(cluster.get("server") or "https://127.0.0.1:6443")
        cluster["server"] = urlunsplit(
            (parts.scheme or "https", f"127.0.0.1:{local_port}", parts.path, "", "")
        )
    return kubeconfig


def fetch_credentials(ref: ClusterRef, local_port: int) -> dict:
    """Read k3s.yaml on the controller as root (k3s writes it 0600 root; the login user has
    passwordless sudo on the cloud images, and root needs none), rewrite it for the tunnel."""
    import yaml

    from clusterous_cli import config, ssh

    endpoint = load_endpoint(ref)
    with ssh.connect_cluster(ref) as conn:
        code, out, err = conn.run(["sh", "-c", READ_AS_ROOT, "read-as-root", endpoint.k3s_kubeconfig])
    if code != 0:
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {code}"]
        raise Failure(
            f"cannot read the cluster credentials {endpoint.k3s_kubeconfig} on the controller: {reason[0]}",
            "is the cluster fully up? re-run `clusterous-k8s up` to wait for it",
        )
    text = out.decode(errors="replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict) or not data.get("clusters"):
        raise Failure(f"{endpoint.k3s_kubeconfig} on the controller is not a kubeconfig", "re-run `up`")
    data = rewrite_server(data, local_port)
    config.write_private(ref.directory / CREDENTIALS_FILE, yaml.safe_dump(data, sort_keys=False))
    return data


def credentials(ref: ClusterRef, refresh: bool = False) -> tuple[dict, int]:
    """(kubeconfig dict pointing at the running local tunnel, its port), fetching it when needed."""
    import yaml

    from clusterous_cli import hostkeys

    endpoint = load_endpoint(ref)
    pinned = hostkeys.read_pinned(endpoint.known_hosts, endpoint.host_key_name)
    # Without a pin the tunnel can never connect: say so now rather than after its timeout.
    hostkeys.check(
        pinned[0] if pinned else hostkeys.HostKey("none", ""), pinned, endpoint.host_key_name, RELEARN_OR_UP
    )
    local_port = tunnels.ensure_api_tunnel(ref)
    path = ref.directory / CREDENTIALS_FILE
    data = None
    if path.exists() and not refresh:
        data = yaml.safe_load(path.read_text())
        servers = [(c.get("cluster") or {}).get("server", "") for c in data.get("clusters") or []]
        if not all(urlsplit(s).port == local_port for s in servers):
            data = None
    if data is None:
        data = fetch_credentials(ref, local_port)
    return data, local_port


def api_client(ref: ClusterRef, refresh: bool = False):
    """A kubernetes ApiClient talking through the tunnel (refresh: fetch the credentials anew).
    `kubernetes` is imported only once the credentials are there: it takes longer to import than
    a missing host key pin takes to report (`credentials` checks it first)."""
    data, _ = credentials(ref, refresh)
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config_from_dict(data, client_configuration=configuration)
    return client.ApiClient(configuration)


def api_failure(what: str, exc: Exception) -> Failure:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
    return Failure(
        f"{what}: the Kubernetes API answered {status} {reason}" if status else f"{what}: {reason}",
        "check the cluster with `clusterous-k8s status`",
    )


def component_pods(api, component: str, namespace: str) -> list:
    """Pods of a component (label clusterous.io/component), running ones first, oldest first."""
    from kubernetes import client

    try:
        pods = client.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=f"{COMPONENT_LABEL}={component}"
        )
    except Exception as exc:  # noqa: BLE001 - ApiException, urllib3 errors
        raise api_failure(f"listing the pods of '{component}'", exc) from None
    items = list(pods.items or [])
    items.sort(
        key=lambda p: (
            (p.status.phase if p.status else "") != "Running",
            p.metadata.name if p.metadata else "",
        )
    )
    return items


def resolve_component(ref: ClusterRef, component: str, namespace: str = "default") -> str:
    """The address the controller uses to reach a component: its Service's ClusterIP, else a pod IP."""
    from kubernetes import client

    api = api_client(ref)
    core = client.CoreV1Api(api)
    try:
        services = core.list_namespaced_service(
            namespace, label_selector=f"{COMPONENT_LABEL}={component}"
        ).items
        if not services:
            services = [
                s
                for s in core.list_namespaced_service(namespace).items
                if s.metadata and s.metadata.name == component
            ]
    except Exception as exc:  # noqa: BLE001
        raise api_failure(f"looking up component '{component}'", exc) from None
    for service in services:
        ip = service.spec.cluster_ip if service.spec else None
        if ip and ip != "None":
            return ip
    for pod in component_pods(api, component, namespace):
        if pod.status and pod.status.pod_ip:
            return pod.status.pod_ip
    raise Failure(
        f"no Service or running pod for component '{component}' in namespace '{namespace}'",
        "check the app runs (`clusterous-k8s status`), or give LOCAL:HOST:PORT with an address",
    )
