"""Central logging (issue 8): the chart rendered by the real helm, the HelmChart object `up`
applies, the logging level's bad input, and `clusterous-k8s logging` end to end through the
harness sshd and the Kubernetes API emulator.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import tarfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from clusterous_provisioner import logging_addon
from clusterous_provisioner.errors import BadInput
from tests.harness.k8s_controllers import tolerates
from tests.harness.tools import REPO, tool_path, validate_k8s
from tests.ssh_support import HELMCHART_CRD, make_controller, write_k3s_yaml

CHART = REPO / "charts" / "clusterous-logging"
NAMESPACE = logging_addon.DEFAULT_NAMESPACE
RELEASE = logging_addon.RELEASE_NAME
CONTROLLER_TAINT = {"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}
PINNED = re.compile(r"^[a-z0-9./-]+:v?\d+\.\d+\.\d+@sha256:[0-9a-f]{64}$")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool_path("helm")), *args], capture_output=True, text=True, check=check)


def render(chart: Path | str = CHART, *sets: str, values_file: Path | None = None) -> list[dict]:
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
    args += [a for s in sets for a in ("--set", s)]
    if values_file:
        args += ["--values", str(values_file)]
    out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str, namespace: str = NAMESPACE) -> dict:
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and d["metadata"].get("namespace", NAMESPACE) == namespace
    ]
    assert len(found) == 1, f"{kind}/{name} in {namespace}: {len(found)} found"
    return found[0]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in ("DaemonSet", "Deployment", "StatefulSet")
    ]


def collector_config(docs: list[dict]) -> dict:
    daemonset = by_kind(docs, "DaemonSet")[0]
    spec = daemonset["spec"]["template"]["spec"]
    config_volume = next(v for v in spec["volumes"] if v["name"] == "config")
    configmap = one(docs, "ConfigMap", config_volume["configMap"]["name"])
    args = spec["containers"][0]["args"]
    config_file = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
    assert Path(config_file).parent == Path("/fluent-bit/config")
    return yaml.safe_load(configmap["data"][Path(config_file).name]), configmap


@pytest.fixture(scope="module")
def rendered() -> dict[int, list[dict]]:
    return {level: render(CHART, f"level={level}") for level in (1, 2)}


# --- the chart ---------------------------------------------------------------------------------


def test_helm_lint_is_clean_at_both_levels() -> None:
    for level in (1, 2):
        result = helm("lint", "--strict", str(CHART), "--set", f"level={level}", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "[ERROR]" not in result.stdout and "[WARNING]" not in result.stdout


@pytest.mark.parametrize("level", [1, 2])
def test_rendered_chart_passes_kubernetes_schemas(rendered, level) -> None:
    docs = rendered[level]
    assert validate_k8s(docs) == len(docs)


@pytest.mark.parametrize("level", [1, 2])
def test_collector_inputs_follow_the_level(rendered, level) -> None:
    config, configmap = collector_config(rendered[level])
    inputs = config["pipeline"]["inputs"]
    names = [i["name"] for i in inputs]
    tail = next(i for i in inputs if i["name"] == "tail")
    assert tail["path"] == "/var/log/containers/*.log"
    assert sorted(i["mode"] for i in inputs if i["name"] == "syslog") == ["tcp", "udp"]
    assert {i["port"] for i in inputs if i["name"] == "syslog"} == {5514}
    parsers = {i["parser"] for i in inputs if i["name"] == "syslog"}
    for parser in parsers:  # the syslog parser is defined in the chart itself
        assert re.search(rf"Name\s+{re.escape(parser)}\s", configmap["data"]["parsers.conf"])
    assert ("systemd" in names) == (level == 2)

    daemonset = by_kind(rendered[level], "DaemonSet")[0]
    mounts = {m["mountPath"] for m in daemonset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/var/log" in mounts  # container logs and the journal both live under it
    if level == 2:
        journal = next(i for i in inputs if i["name"] == "systemd")
        assert journal["path"].startswith("/var/log/")


@pytest.mark.parametrize("level", [1, 2])
def test_records_are_tagged_with_app_and_component_for_loki(rendered, level) -> None:
    config, configmap = collector_config(rendered[level])
    filters = config["pipeline"]["filters"]
    kube = next(f for f in filters if f["name"] == "kubernetes")
    assert kube["labels"] is True or str(kube["labels"]).lower() == "on"
    lua = next(f for f in filters if f["name"] == "lua")
    script = configmap["data"][Path(lua["script"]).name]
    assert f"function {lua['call']}(" in script
    assert '"clusterous.io/app"' in script and '"clusterous.io/component"' in script
    output = next(o for o in config["pipeline"]["outputs"] if o["name"] == "loki")
    assert output["match"] == "*"
    assert {"$app", "$component"} <= set(output["label_keys"].split(","))
    # Every key Loki labels by is one the Lua filter sets.
    for key in output["label_keys"].split(","):
        assert f'record["{key[1:]}"] =' in script
    loki_service = one(rendered[level], "Service", f"{RELEASE}-loki")
    assert output["host"] == f"{RELEASE}-loki.{NAMESPACE}.svc.cluster.local"
    assert output["port"] == loki_service["spec"]["ports"][0]["port"]


def test_syslog_service_takes_tcp_and_udp_5514_to_the_collectors(rendered) -> None:
    docs = rendered[1]
    service = one(docs, "Service", "central-logging")
    ports = {(p["protocol"], p["port"]) for p in service["spec"]["ports"]}
    assert ports == {("TCP", 5514), ("UDP", 5514)}
    daemonset = by_kind(docs, "DaemonSet")[0]
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"]: p for p in daemonset["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for port in service["spec"]["ports"]:
        target = container_ports[port["targetPort"]]
        assert (target["protocol"], target["containerPort"]) == (port["protocol"], port["port"])

    # Applications in `default` resolve the short name through an alias to the real Service.
    alias = one(docs, "Service", "central-logging", namespace="default")
    assert alias["spec"] == {
        "type": "ExternalName",
        "externalName": f"central-logging.{NAMESPACE}.svc.cluster.local",
    }


def test_no_alias_when_installed_into_the_apps_namespace() -> None:
    docs = [
        d
        for d in yaml.safe_load_all(helm("template", RELEASE, str(CHART), "--namespace", "default").stdout)
        if d
    ]
    services = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "central-logging"]
    assert [s["spec"]["type"] for s in services] == ["ClusterIP"]


def test_collector_runs_everywhere_with_least_privilege(rendered) -> None:
    docs = rendered[2]
    daemonset = by_kind(docs, "DaemonSet")[0]
    spec = daemonset["spec"]["template"]["spec"]
    assert tolerates(spec["tolerations"], CONTROLLER_TAINT)
    assert "nodeSelector" not in spec and "affinity" not in spec
    role = one(docs, "ClusterRole", spec["serviceAccountName"])
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list", "watch"]}
    ]
    binding = one(docs, "ClusterRoleBinding", spec["serviceAccountName"])
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": spec["serviceAccountName"], "namespace": NAMESPACE}
    ]
    assert not [r for r in by_kind(docs, "Role") + by_kind(docs, "ClusterRole") if r is not role]


@pytest.mark.parametrize("level", [1, 2])
def test_every_container_has_requests_limits_and_a_pinned_image(rendered, level) -> None:
    specs = pod_specs(rendered[level])
    assert {name.split("/")[0] for name, _ in specs} == {"DaemonSet", "Deployment"}
    for name, spec in specs:
        for container in spec.get("initContainers", []) + spec["containers"]:
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name} {container['name']} {kind}"
            assert PINNED.match(container["image"]), container["image"]


def test_unpinned_images_and_bad_levels_are_refused() -> None:
    for bad in (
        "collector.image.tag=latest",
        "grafana.image.tag=latest",
        "loki.image.digest=",
        "grafana.image.digest=sha256:abc",
        "level=0",
        "level=3",
    ):
        result = helm("template", RELEASE, str(CHART), "--set", bad, check=False)
        assert result.returncode != 0, bad
        assert bad.split("=")[0].split(".")[-1] in result.stderr


def test_loki_stores_on_a_persistent_private_volume(rendered) -> None:
    docs = rendered[1]
    claim = one(docs, "PersistentVolumeClaim", f"{RELEASE}-loki")
    assert claim["spec"]["storageClassName"] == "clusterous-private"
    loki = one(docs, "Deployment", f"{RELEASE}-loki")
    spec = loki["spec"]["template"]["spec"]
    data = next(v for v in spec["volumes"] if v.get("persistentVolumeClaim"))
    assert data["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == data["name"])
    config = yaml.safe_load(one(docs, "ConfigMap", f"{RELEASE}-loki")["data"]["loki.yaml"])
    assert config["common"]["path_prefix"].startswith(mount["mountPath"])
    assert config["common"]["storage"]["filesystem"]["chunks_directory"].startswith(mount["mountPath"])
    assert tolerates(spec["tolerations"], CONTROLLER_TAINT)
    other = render(CHART, "loki.persistence.storageClass=gp3")
    assert one(other, "PersistentVolumeClaim", f"{RELEASE}-loki")["spec"]["storageClassName"] == "gp3"


def test_grafana_has_loki_provisioned_and_the_dashboard(rendered) -> None:
    docs = rendered[1]
    grafana = one(docs, "Deployment", f"{RELEASE}-grafana")
    spec = grafana["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    def mounted_file(path: str) -> str:
        if path in mounts:  # a single file (subPath) mount
            mount = mounts[path]
            configmap = one(docs, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
            return configmap["data"][mount["subPath"]]
        folder = str(Path(path).parent)
        configmap = one(docs, "ConfigMap", volumes[mounts[folder]["name"]]["configMap"]["name"])
        return configmap["data"][Path(path).name]

    datasources = yaml.safe_load(mounted_file("/etc/grafana/provisioning/datasources/datasources.yaml"))
    [loki] = datasources["datasources"]
    loki_service = one(docs, "Service", f"{RELEASE}-loki")
    assert loki["type"] == "loki" and loki["isDefault"] is True
    assert loki["url"] == (
        f"http://{loki_service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:"
        f"{loki_service['spec']['ports'][0]['port']}"
    )

    providers = yaml.safe_load(mounted_file("/etc/grafana/provisioning/dashboards/dashboards.yaml"))
    folder = providers["providers"][0]["options"]["path"]
    dashboard = json.loads(mounted_file(f"{folder}/clusterous-logs.json"))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"app", "component"} <= variables
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert any(p["type"] == "logs" for p in dashboard["panels"])
    assert all("$app" in e and "$component" in e for e in exprs)
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {loki["uid"]}


def test_admin_password_is_generated_into_a_secret(rendered) -> None:
    docs = rendered[1]
    secret = one(docs, "Secret", logging_addon.GRAFANA_SECRET)
    password = base64.b64decode(secret["data"]["admin-password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{24}", password)
    assert base64.b64decode(secret["data"]["admin-user"]).decode() == "admin"
    again = one(render(CHART), "Secret", logging_addon.GRAFANA_SECRET)
    assert again["data"]["admin-password"] != secret["data"]["admin-password"]  # random per install
    grafana = one(docs, "Deployment", f"{RELEASE}-grafana")
    env = {e["name"]: e for e in grafana["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["GF_SECURITY_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "admin-password")
    service = one(docs, "Service", logging_addon.GRAFANA_SERVICE)
    assert service["spec"]["ports"][0]["port"] == logging_addon.GRAFANA_PORT


def test_upgrade_keeps_the_admin_password(rendered, k8s_api) -> None:
    """An upgrade renders against the cluster: `lookup` finds the Secret and keeps its password."""
    installed = one(rendered[1], "Secret", logging_addon.GRAFANA_SECRET)
    installed["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "Helm"
    installed["metadata"]["annotations"] = {
        "meta.helm.sh/release-name": RELEASE,
        "meta.helm.sh/release-namespace": NAMESPACE,
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    k8s_api.create("v1/namespaces", namespace)
    k8s_api.create("v1/secrets", installed, NAMESPACE)
    upgraded = helm(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--set",
        "level=2",
        "--dry-run=server",
        "--kubeconfig",
        str(k8s_api.kubeconfig),
        "--show-only",
        "templates/grafana-secret.yaml",
    ).stdout
    secret = yaml.safe_load(upgraded)
    assert secret["data"]["admin-password"] == installed["data"]["admin-password"]


# --- the HelmChart object `up` applies ------------------------------------------------------


def _unpack(tgz: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.mark.parametrize("level", [1, 2])
def test_helmchart_object_embeds_the_chart(level, tmp_path) -> None:
    change = logging_addon.logging_manifests(level)
    assert change.action == "apply"
    obj = change.manifest
    assert (obj["apiVersion"], obj["kind"]) == ("helm.cattle.io/v1", "HelmChart")
    assert obj["metadata"]["namespace"] == "kube-system"
    assert (change.namespace, change.name) == (obj["metadata"]["namespace"], obj["metadata"]["name"])
    spec = obj["spec"]
    # Field names of helm-controller's HelmChartSpec (helm.cattle.io/v1); nothing else is accepted.
    known = {"chart", "chartContent", "repo", "version", "targetNamespace", "createNamespace"}
    known |= {"valuesContent", "set", "failurePolicy", "timeout", "backOffLimit", "bootstrap"}
    assert set(spec) <= known
    assert "chart" not in spec and "repo" not in spec  # nothing fetched from the internet
    assert spec["targetNamespace"] == NAMESPACE and spec["createNamespace"] is True
    assert spec["failurePolicy"] in ("abort", "reinstall")
    assert yaml.safe_load(spec["valuesContent"]) == {"level": level}
    assert yaml.safe_load(logging_addon.helmchart_yaml(level)) == obj

    tgz = base64.b64decode(spec["chartContent"], validate=True)
    assert tgz == logging_addon.package_chart()  # reproducible: re-running `up` changes nothing

    # The archive holds the chart folder's files, in `helm package`'s layout.
    packaged = helm("package", str(CHART), "--destination", str(tmp_path)).stdout
    helm_tgz = Path(re.search(r"saved it to: (\S+)", packaged).group(1)).read_bytes()
    ours, theirs = _unpack(tgz), _unpack(helm_tgz)
    assert set(ours) == set(theirs)
    for name, content in ours.items():
        relative = Path(name).relative_to("clusterous-logging")
        assert content == (CHART / relative).read_bytes(), name
        if name.endswith("Chart.yaml"):  # helm re-serialises Chart.yaml
            assert yaml.safe_load(content) == yaml.safe_load(theirs[name])
        else:
            assert content == theirs[name], name

    # helm-controller's view: the .tgz plus valuesContent renders the same objects.
    (tmp_path / "chart.tgz").write_bytes(tgz)
    (tmp_path / "values.yaml").write_text(spec["valuesContent"])
    from_tgz = render(tmp_path / "chart.tgz", values_file=tmp_path / "values.yaml")
    from_dir = render(CHART, f"level={level}")
    key = lambda d: (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))  # noqa: E731
    assert sorted(map(key, from_tgz)) == sorted(map(key, from_dir))
    config, _ = collector_config(from_tgz)
    assert ("systemd" in [i["name"] for i in config["pipeline"]["inputs"]]) == (level == 2)
    assert validate_k8s(from_tgz) == len(from_tgz)


def test_level_0_deletes_the_helmchart() -> None:
    off = logging_addon.logging_manifests(0)
    on = logging_addon.logging_manifests(1)
    assert off.action == "delete" and off.manifest is None
    identity = lambda c: (c.api_version, c.kind, c.namespace, c.name)  # noqa: E731
    assert identity(off) == identity(on)
    assert identity(on) == (
        on.manifest["apiVersion"],
        on.manifest["kind"],
        on.manifest["metadata"]["namespace"],
        on.manifest["metadata"]["name"],
    )
    with pytest.raises(ValueError):
        logging_addon.helmchart_manifest(0)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [3, -1, "3", "two", 1.5, True, None])
def test_logging_level_outside_0_to_2_is_bad_input(value) -> None:
    with pytest.raises(BadInput) as caught:
        logging_addon.check_logging_level(value, "--logging-level")
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith("--logging-level: expected 0 (off), 1")
    with pytest.raises(BadInput):
        logging_addon.logging_manifests(value)


@pytest.mark.parametrize("value", [0, 1, 2, "2"])
def test_logging_levels_0_to_2_are_accepted(value) -> None:
    assert logging_addon.check_logging_level(value, "--logging-level") == int(value)


def test_up_refuses_a_bad_logging_level(cli, tmp_path) -> None:
    result = cli(["up", "--dry-run", "--logging-level", "3", "--name", "logs"])
    assert result.exit_code == 2
    assert "--logging-level" in result.stderr and "got 3" in result.stderr
    cluster_file = tmp_path / "cluster.yml"
    cluster_file.write_text("cluster_name: logs\ncentral_logging_level: 5\n")
    result = cli(["up", "--dry-run", str(cluster_file)])
    assert result.exit_code == 2
    assert "central_logging_level" in result.stderr and "got 5" in result.stderr


# --- `clusterous-k8s logging` through the tunnel ----------------------------------------------


@pytest.fixture
def cluster(sshd, k8s_api, tmp_path):
    """A controller (the harness sshd) whose k3s API is the emulator, with k3s's CRDs served."""
    from clusterous_cli import tunnels

    k3s_yaml = write_k3s_yaml(tmp_path / "k3s.yaml", "k3s-test-token")
    port = int(k8s_api.url.rsplit(":", 1)[1])
    made = make_controller(sshd, api_port=port, k3s_kubeconfig=str(k3s_yaml))
    k8s_api.create("apiextensions.k8s.io/v1/customresourcedefinitions", HELMCHART_CRD)
    try:
        yield made
    finally:
        tunnels.stop_supervisor(made.ref)


@pytest.fixture
def grafana_standin():
    """An HTTP server standing in for Grafana, at the address the Service's ClusterIP names."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"grafana stand-in"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_logging_opens_grafana_and_prints_the_login(cluster, k8s_api, grafana_standin, cli) -> None:
    from clusterous_cli import tunnels

    # What the helm-controller would leave: the HelmChart `up` applied and the chart's objects.
    k8s_api.create("helm.cattle.io/v1/helmcharts", logging_addon.helmchart_manifest(2), "kube-system")
    k8s_api.create(
        "v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    )
    docs = render(CHART, "level=2", f"grafana.servicePort={grafana_standin}")
    secret = one(docs, "Secret", logging_addon.GRAFANA_SECRET)
    service = one(docs, "Service", logging_addon.GRAFANA_SERVICE)
    service["spec"]["clusterIP"] = "127.0.0.1"  # the API server allocates it; here the stand-in's address
    k8s_api.create("v1/secrets", secret, NAMESPACE)
    k8s_api.create("v1/services", service, NAMESPACE)

    local = tunnels.free_port()
    result = cli(["logging", "--port", str(local)])
    assert result.exit_code == 0, result.stdout + result.stderr
    password = base64.b64decode(secret["data"]["admin-password"]).decode()
    assert f"http://localhost:{local}" in result.stdout
    assert re.search(r"user:\s+admin\b", result.stdout)
    assert password in result.stdout
    with urllib.request.urlopen(f"http://localhost:{local}/", timeout=20) as response:
        assert response.read() == b"grafana stand-in"

    # Asking again reuses the tunnel and prints the same login, as JSON for scripts.
    again = cli(["logging", "--json"])
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout) == {
        "url": f"http://localhost:{local}",
        "user": "admin",
        "password": password,
        "level": 2,
    }


def test_logging_on_a_cluster_without_logging_is_bad_input(cluster, k8s_api, cli) -> None:
    result = cli(["logging"])
    assert result.exit_code == 2
    assert "logging is off; enable it with `up --logging-level 1`" in result.stderr
    assert "Traceback" not in result.stderr

    # A level recorded at bootstrap without its HelmChart is a failure to repair, not bad input.
    k8s_api.create(
        "v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "clusterous-system"}}
    )
    info = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info"}}
    k8s_api.create("v1/configmaps", {**info, "data": {"loggingLevel": "1"}}, "clusterous-system")
    result = cli(["logging"])
    assert result.exit_code == 1
    assert "up --logging-level 1" in result.stderr
