"""`logging`: open the central logging UI (Grafana) through the SSH tunnel and print its login.

Whether logging is on is read from the cluster itself: the HelmChart object `up` applies for
levels 1|2 (clusterous_provisioner.logging_addon) and deletes for level 0. The level the
provisioner recorded at bootstrap (ConfigMap clusterous-system/cluster-info, `loggingLevel`)
only explains a missing HelmChart. The tunnel goes to the Grafana Service's ClusterIP, which
the controller (a k3s server) can reach, through the same supervisor as `tunnel add`.
"""

from __future__ import annotations

from typing import cast

import typer

from clusterous_cli.commands.options import CLUSTER_OPTION, JSON_OPTION, cluster_ref
from clusterous_core.errors import ClusterousError
from clusterous_core.names import CLUSTER_INFO, NAMESPACE

HELP = (
    "Open the central logging UI (Grafana) through an SSH tunnel and print its URL and admin login.\n\n"
    "Logging must be on: `clusterous-k8s up --logging-level 1` (or 2 for the nodes' system logs too).\n\n"
    "Example: clusterous-k8s logging --port 3000"
)
LOGGING_OFF = "logging is off; enable it with `up --logging-level 1`"
TUNNEL_NAME = "logging"
DEFAULT_LOCAL_PORT = 3000


class LoggingOff(ClusterousError):
    """Bad input (exit 2): the user asked for the logging UI of a cluster that has none."""

    exit_code = 2

    def __init__(self) -> None:
        super().__init__(LOGGING_OFF)


def level_of(helmchart: dict | None) -> int:
    """The logging level a HelmChart object installs; 0 when there is none or it is being deleted."""
    from clusterous_provisioner import logging_addon

    if not helmchart or (helmchart.get("metadata") or {}).get("deletionTimestamp"):
        return 0
    annotations = (helmchart.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(logging_addon.LEVEL_ANNOTATION)
    if raw is None:
        import yaml

        raw = (yaml.safe_load((helmchart.get("spec") or {}).get("valuesContent") or "") or {}).get("level")
    return logging_addon.check_logging_level(raw, "HelmChart kube-system/clusterous-logging", "level")


def _read_helmchart(api) -> dict | None:
    from kubernetes import client

    from clusterous_cli import kubeapi
    from clusterous_provisioner import logging_addon as la

    group, version = la.HELMCHART_API_VERSION.split("/")
    try:
        helmchart = client.CustomObjectsApi(api).get_namespaced_custom_object(
            group, version, la.HELMCHART_NAMESPACE, "helmcharts", la.RELEASE_NAME
        )
        return cast(dict, helmchart)  # a custom object comes back as a dict
    except client.ApiException as exc:
        if exc.status == 404:  # no such object, or no HelmChart resource at all
            return None
        raise kubeapi.api_failure("reading the logging HelmChart", exc) from None
    except Exception as exc:  # noqa: BLE001 - urllib3 errors
        raise kubeapi.api_failure("reading the logging HelmChart", exc) from None


def _recorded_level(core) -> str | None:
    """`loggingLevel` from cluster-info, as the provisioner recorded it (None when absent)."""
    try:
        info = core.read_namespaced_config_map(CLUSTER_INFO, NAMESPACE)
    except Exception:  # noqa: BLE001 - a missing record only means there is nothing to explain
        return None
    return (info.data or {}).get("loggingLevel")


def _grafana(core, namespace: str) -> tuple[str, int, str, str]:
    """(ClusterIP, port, user, password) of the installed Grafana."""
    import base64

    from kubernetes import client

    from clusterous_cli import kubeapi
    from clusterous_core.errors import Failure
    from clusterous_provisioner import logging_addon as la

    pending = Failure(
        "central logging is still being installed (Grafana is not there yet)",
        "wait a minute and re-run `clusterous-k8s logging`; `kubectl -n kube-system get helmchart "
        "clusterous-logging` shows the install job",
    )
    try:
        secret = core.read_namespaced_secret(la.GRAFANA_SECRET, namespace)
        service = core.read_namespaced_service(la.GRAFANA_SERVICE, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            raise pending from None
        raise kubeapi.api_failure("reading the Grafana Secret and Service", exc) from None
    data = secret.data or {}
    if "admin-password" not in data or not service.spec or not service.spec.cluster_ip:
        raise pending
    user = base64.b64decode(data.get("admin-user") or base64.b64encode(b"admin")).decode()
    password = base64.b64decode(data["admin-password"]).decode()
    ports = [p.port for p in service.spec.ports or [] if p.name == "http"] or [la.GRAFANA_PORT]
    return service.spec.cluster_ip, ports[0], user, password


def logging(
    ctx: typer.Context,
    cluster: str | None = CLUSTER_OPTION,
    port: int = typer.Option(
        DEFAULT_LOCAL_PORT, "--port", help="Local port for the UI; the next free one if it is taken."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    from kubernetes import client

    from clusterous_cli import kubeapi, output, tunnels
    from clusterous_cli.endpoint import load_endpoint
    from clusterous_core.errors import Failure

    tunnels.check_local_port(port, "--port")
    ref = cluster_ref(ctx, cluster)
    load_endpoint(ref)  # a cluster we know nothing about is reported before any connection
    api = kubeapi.api_client(ref)
    core = client.CoreV1Api(api)
    helmchart = _read_helmchart(api)
    level = level_of(helmchart)
    if helmchart is None or level == 0:  # level_of(None) is 0
        recorded = _recorded_level(core)
        if recorded in ("1", "2"):
            raise Failure(
                f"logging level {recorded} is recorded for {ref.cluster}, but logging is not installed",
                f"re-run `clusterous-k8s up --logging-level {recorded}`",
            )
        raise LoggingOff()
    namespace = (helmchart.get("spec") or {}).get("targetNamespace") or "default"
    host, remote_port, user, password = _grafana(core, namespace)

    chosen: list[int] = []

    def add_dashboard(desired: tunnels.Desired) -> None:
        """Under tunnels.yml's lock: another command's tunnel added meanwhile is kept."""
        existing = next((t for t in desired.tunnels if t.host == host and t.port == remote_port), None)
        if existing:
            chosen.append(existing.local)
            return
        ours = {t.local for t in desired.tunnels} | ({desired.api_local} if desired.api_local else set())
        local = port if port not in ours and tunnels.bindable(port) else tunnels.next_free_port(port, ours)
        desired.tunnels.append(
            tunnels.Tunnel(local=local, host=host, port=remote_port, component=TUNNEL_NAME)
        )
        chosen.append(local)

    tunnels.update_desired(ref, add_dashboard)
    local = chosen[0]
    tunnels.apply(ref, None, [local])
    url = f"http://localhost:{local}"
    if as_json:
        output.print_json({"url": url, "user": user, "password": password, "level": level})
        return
    output.say(f"central logging (level {level}) of {ref.cluster}: dashboard 'Clusterous logs'")
    typer.echo(f"URL:      {url}")
    typer.echo(f"user:     {user}")
    typer.echo(f"password: {password}")
