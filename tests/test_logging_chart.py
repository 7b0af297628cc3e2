"""Central logging (issue 8): the chart rendered by the real helm, the HelmChart object `up`
applies, the logging level's bad input, and `clusterous-k8s logging` end to end through the
harness sshd and the Kubernetes API emulator.
"""

from __future__ import annotations

import base64
import fnmatch
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

from clusterous_core.errors import BadInput
from clusterous_provisioner import logging_addon
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
    outputs = [o for o in config["pipeline"]["outputs"] if o["name"] == "loki"]
    loki_service = one(rendered[level], "Service", f"{RELEASE}-loki")
    for output in outputs:
        assert {"$app", "$component"} <= set(output["label_keys"].split(","))
        # Every key Loki labels by is one the Lua filter sets.
        for key in output["label_keys"].split(","):
            assert f'record["{key[1:]}"] =' in script
        assert output["host"] == f"{RELEASE}-loki.{NAMESPACE}.svc.cluster.local"
        assert output["port"] == loki_service["spec"]["ports"][0]["port"]
    # Every input's lines reach exactly one Loki output.
    for tag in (i["tag"].replace("*", "x") for i in config["pipeline"]["inputs"]):
        assert len([o for o in outputs if fnmatch.fnmatchcase(tag, o["match"])]) == 1, tag


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


# --- issue 19: every line kept, buffered, findable -------------------------------------------
#
# Fluent Bit is not installable here (no Debian, PyPI or npm package of it), so its configuration
# is checked by reading the rendered chart the way Fluent Bit 5.1 does (semantics read in its
# source: plugins/in_syslog/syslog_prot.c, plugins/filter_parser/filter_parser.c,
# src/flb_parser_regex.c) and running the chart's regexes with Python's `re` and its Lua filter
# with the real LuaJIT. The syslog samples come from the real senders: util-linux `logger` and
# Python's SysLogHandler, captured on a loopback UDP socket.

ONIGMO_ONLY = re.compile(r"\$|\\[zZAhHK]|\(\?[a-z]*[ms]|\(\?>|\(\?<[=!]|[*+?}]\+")


def fluent_parsers(configmap: dict) -> dict[str, dict[str, str]]:
    """The [PARSER] sections of the chart's parsers.conf: name -> {format, regex, ...} (lower-case keys)."""
    parsers, current = {}, None
    for raw in configmap["data"]["parsers.conf"].splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "[PARSER]":
            current = {}
            continue
        key, _, value = line.partition(" ")
        current[key.lower()] = value.strip()
        if key.lower() == "name":
            parsers[value.strip()] = current
    return parsers


def python_regex(onigmo: str) -> re.Pattern:
    """An Onigmo pattern in Python: the same except for named groups, `(?<n>` -> `(?P<n>`."""
    assert not ONIGMO_ONLY.search(onigmo), f"outside the Onigmo/Python common subset: {onigmo}"
    return re.compile(re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", onigmo))


def regex_parse(parser: dict, text: str) -> dict | None:
    """flb_parser_regex_do: search the whole text; unmatched and empty groups are left out
    (Skip_Empty_Values defaults to on); no match is -1 (None)."""
    assert parser["format"] == "regex"
    match = python_regex(parser["regex"]).search(text)
    if match is None:
        return None
    return {k: v for k, v in match.groupdict().items() if v}


def syslog_frames(payload: bytes, mode: str) -> list[str]:
    """in_syslog: a UDP datagram is one message; TCP splits at newline or NUL, empty frames skipped."""
    text = payload.decode("utf-8")
    return [text] if mode == "udp" else [f for f in re.split(r"[\n\x00]", text) if f]


def through_syslog_input(config: dict, configmap: dict, payload: bytes, mode: str, sender: str) -> list[dict]:
    """What the rendered syslog input and the filters after it make of one payload, before Lua."""
    parsers = fluent_parsers(configmap)
    inputs = [i for i in config["pipeline"]["inputs"] if i["name"] == "syslog" and i["mode"] == mode]
    [syslog_input] = inputs
    records = []
    for frame in syslog_frames(payload, mode):
        record = regex_parse(parsers[syslog_input["parser"]], frame)
        if record is None:  # in_syslog drops a line its parser does not match
            continue
        if syslog_input.get("source_address_key"):
            record[syslog_input["source_address_key"]] = f"{mode}://{sender}:40312"
        for filt in config["pipeline"]["filters"]:
            if filt["name"] != "parser" or not fnmatch.fnmatchcase(syslog_input["tag"], filt["match"]):
                continue
            names = filt["parser"] if isinstance(filt["parser"], list) else [filt["parser"]]
            key = filt["key_name"]
            parsed = None
            for name in names:  # first match wins (filter_parser.c)
                parsed = regex_parse(parsers[name], str(record.get(key, "")))
                if parsed is not None:
                    break
            if parsed is None:
                continue  # the record goes on unchanged
            keep = on(filt.get("reserve_data"))
            rest = {k: v for k, v in record.items() if keep and (k != key or on(filt.get("preserve_key")))}
            record = {**parsed, **{k: v for k, v in rest.items() if k not in parsed}}
        records.append(record)
    return records


def on(value: object) -> bool:
    return value is True or str(value).lower() in ("on", "true", "yes", "1")


def lua_literal(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\x00", "\\0")
    return f'"{text}"'


def run_lua_filter(configmap: dict, config: dict, tagged: list[tuple[str, dict]], node: str) -> list[dict]:
    """The chart's Lua filter run by the real LuaJIT on (tag, record) pairs; returns the records'
    string and number fields after the call (collector on node `node`)."""
    from tests.harness.tools import system_tool

    lua = next(f for f in config["pipeline"]["filters"] if f["name"] == "lua")
    script = configmap["data"][Path(lua["script"]).name]
    cases = ", ".join(f"{{{lua_literal(tag)}, {lua_literal(rec)}}}" for tag, rec in tagged)
    driver = f"""
{script}
for _, case in ipairs({{{cases}}}) do
  local code, _, record = {lua["call"]}(case[1], 0, case[2])
  local out = {{"code=" .. code}}
  for k, v in pairs(record) do
    if type(v) == "string" or type(v) == "number" then
      table.insert(out, k .. "=" .. tostring(v):gsub("[\\t\\n]", " "))
    end
  end
  print(table.concat(out, "\\t"))
end
"""
    result = subprocess.run(
        [system_tool("luajit"), "-"], input=driver, capture_output=True, text=True, env={"NODE_NAME": node}
    )
    assert result.returncode == 0, result.stderr
    rows = []
    for line in result.stdout.splitlines():
        row = dict(field.split("=", 1) for field in line.split("\t"))
        assert row.pop("code") == "2"
        rows.append(row)
    return rows


def loki_labels(config: dict, tag: str, record: dict) -> dict[str, str]:
    """The stream labels the rendered Loki output gives a record: `labels` plus `label_keys`."""
    [output] = [o for o in config["pipeline"]["outputs"] if fnmatch.fnmatchcase(tag, o["match"])]
    labels = dict(pair.split("=", 1) for pair in output["labels"].split(","))
    for key in output["label_keys"].split(","):
        labels[key.lstrip("$")] = record[key.lstrip("$")]
    return labels


@pytest.fixture(scope="module")
def syslog_samples() -> list[tuple[str, bytes, dict]]:
    """(what, payload, expected fields) from the real senders, captured on a loopback socket."""
    import logging
    import logging.handlers
    import socket

    from tests.harness.tools import system_tool

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(10)
    port = sink.getsockname()[1]
    host = socket.gethostname()
    samples = []
    try:
        logger = system_tool("logger")
        subprocess.run(
            [logger, "-n", "127.0.0.1", "-P", str(port), "-t", "billing", "rfc5424 line"], check=True
        )
        samples.append(
            (
                "logger -n (RFC 5424)",
                sink.recv(65535),
                {"ident": "billing", "host": host, "message": "rfc5424 line"},
            )
        )
        subprocess.run(
            [
                logger,
                "--rfc3164",
                "-n",
                "127.0.0.1",
                "-P",
                str(port),
                "-t",
                "billing",
                "--id=42",
                "rfc3164 line",
            ],
            check=True,
        )
        samples.append(
            (
                "logger --rfc3164",
                sink.recv(65535),
                {"ident": "billing", "pid": "42", "host": host, "message": "rfc3164 line"},
            )
        )

        handler = logging.handlers.SysLogHandler(address=("127.0.0.1", port))
        log = logging.Logger("app")
        log.addHandler(handler)
        log.warning("no ident, no timestamp")
        samples.append(
            ("SysLogHandler", sink.recv(65535), {"pri": "12", "message": "no ident, no timestamp"})
        )
        handler.ident = "worker: "
        log.error("with ident")
        samples.append(
            (
                "SysLogHandler with ident",
                sink.recv(65535),
                {"pri": "11", "ident": "worker", "message": "with ident"},
            )
        )
        log.error('Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom')
        samples.append(
            (
                "SysLogHandler, several lines",
                sink.recv(65535),
                {
                    "ident": "worker",
                    "message": 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom',
                },
            )
        )
        handler.close()
    finally:
        sink.close()
    samples += [
        (
            "rsyslog forwarding (RFC 3164)",
            b"<13>Mar  7 09:05:01 web-7d9f4 nginx[7]: GET / 200",
            {
                "pri": "13",
                "time": "Mar  7 09:05:01",
                "host": "web-7d9f4",
                "ident": "nginx",
                "pid": "7",
                "message": "GET / 200",
            },
        ),
        (
            "RFC 3164 without host",
            b"<30>Mar 17 09:05:01 cron[99]: job done",
            {"ident": "cron", "pid": "99", "message": "job done"},
        ),
        (
            "RFC 5424 with structured data",
            b'<165>1 2026-03-07T09:05:01.003Z db-0 postgres 12 ID47 [origin ip="10.0.0.1" note="a \\"]\\" b"] checkpoint',
            {"host": "db-0", "ident": "postgres", "pid": "12", "msgid": "ID47", "message": "checkpoint"},
        ),
        ("a bare line", b"plain text, no priority at all", {"message": "plain text, no priority at all"}),
        ("a bare line with a colon", b"ERROR: disk full", {"message": "ERROR: disk full"}),
    ]
    return samples


def test_parser_patterns_keep_to_what_onigmo_and_python_share(rendered) -> None:
    _, configmap = collector_config(rendered[1])
    parsers = fluent_parsers(configmap)
    regexes = {name: p["regex"] for name, p in parsers.items() if p["format"] == "regex"}
    assert regexes
    for name, pattern in regexes.items():
        python_regex(pattern)  # compiles, and uses nothing the two engines read differently
        assert not re.search(r"\(\?<(\w+)>.*\(\?<\1>", pattern), f"{name}: a group name twice"


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("mode", ["udp", "tcp"])
def test_every_syslog_line_is_kept_whatever_its_format(rendered, syslog_samples, level, mode) -> None:
    config, configmap = collector_config(rendered[level])
    for what, payload, expected in syslog_samples:
        if mode == "tcp" and "several lines" in what:
            continue  # TCP frames at newlines (in_syslog): each line is a record of its own
        wire = payload if mode == "udp" else payload.rstrip(b"\x00") + b"\n"
        records = through_syslog_input(config, configmap, wire, mode, "10.42.1.7")
        assert len(records) == 1, f"{what}: {payload!r} -> {records}"
        record = records[0]
        for key, value in expected.items():
            assert record.get(key) == value, f"{what} ({mode}): {key} = {record.get(key)!r}, not {value!r}"
        assert "\x00" not in json.dumps(record), what


def test_syslog_over_tcp_keeps_each_line_of_a_stream(rendered) -> None:
    config, configmap = collector_config(rendered[1])
    stream = b"<14>first\n<13>Mar  7 09:05:01 web-1 app: second\nthird, bare\n"
    records = through_syslog_input(config, configmap, stream, "tcp", "10.42.1.7")
    assert [r["message"] for r in records] == ["first", "second", "third, bare"]


@pytest.mark.parametrize("level", [1, 2])
def test_syslog_labels_name_the_sender_not_the_collector(rendered, syslog_samples, level) -> None:
    config, configmap = collector_config(rendered[level])
    tagged = []
    for _, payload, _ in syslog_samples:
        [record] = through_syslog_input(config, configmap, payload, "udp", "10.42.1.7")
        tagged.append(("syslog.udp", record))
    out = run_lua_filter(configmap, config, tagged, node="collector-node")
    for (what, _, expected), record in zip(syslog_samples, out, strict=True):
        labels = loki_labels(config, "syslog.udp", record)
        assert labels["source"] == "syslog" and labels["job"] == "clusterous"
        assert labels["node"] == expected.get("host", "10.42.1.7"), what  # else the sender's address
        assert labels["app"] == expected.get("ident", "syslog"), what
        if "pri" in expected:
            severity = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"][
                int(expected["pri"]) % 8
            ]
            assert record["severity"] == severity, what
    assert "collector-node" not in {loki_labels(config, "syslog.udp", r)["node"] for r in out}


def test_journal_lines_make_no_stream_per_session(rendered) -> None:
    config, configmap = collector_config(rendered[2])
    journal = [
        {
            "SYSTEMD_UNIT": "session-12.scope",
            "SYSTEMD_SESSION": "12",
            "SYSLOG_IDENTIFIER": "sshd",
            "MESSAGE": "a",
        },
        {
            "SYSTEMD_UNIT": "session-13.scope",
            "SYSTEMD_SESSION": "13",
            "SYSLOG_IDENTIFIER": "sshd",
            "MESSAGE": "b",
        },
        {"SYSTEMD_UNIT": "user@1000.service", "MESSAGE": "c"},
        {"SYSTEMD_UNIT": "user@1001.service", "MESSAGE": "d"},
        {"SYSTEMD_UNIT": "k3s.service", "MESSAGE": "e"},
        {"SYSLOG_IDENTIFIER": "kernel", "MESSAGE": "f"},
    ]
    tag = next(i["tag"] for i in config["pipeline"]["inputs"] if i["name"] == "systemd").replace("*", "x")
    out = run_lua_filter(configmap, config, [(tag, r) for r in journal], node="worker-3")
    streams = [tuple(sorted(loki_labels(config, tag, r).items())) for r in out]
    assert streams[0] == streams[1]  # two logins, one stream
    assert streams[2] == streams[3]  # two users' managers, one stream
    assert len(set(streams)) == 4
    assert {loki_labels(config, tag, r)["node"] for r in out} == {"worker-3"}
    assert all("12" not in v and "1000" not in v for r in out for v in loki_labels(config, tag, r).values())


def test_container_lines_keep_large_pods_metadata_and_their_labels(rendered) -> None:
    config, configmap = collector_config(rendered[1])
    kube = next(f for f in config["pipeline"]["filters"] if f["name"] == "kubernetes")
    assert str(kube["buffer_size"]) == "0"  # no limit on the API server's answer (flb_http_buffer_size)
    record = {
        "log": "hello",
        "kubernetes": {
            "pod_name": "billing-7d9f4-x2",
            "container_name": "main",
            "labels": {"clusterous.io/app": "billing", "clusterous.io/component": "api"},
        },
    }
    [out] = run_lua_filter(configmap, config, [("kube.var.log.containers.x.log", record)], node="worker-1")
    assert loki_labels(config, "kube.var.log.containers.x.log", out) == {
        "job": "clusterous",
        "source": "container",
        "app": "billing",
        "component": "api",
        "node": "worker-1",
    }


def test_the_parser_annotation_works_or_is_off() -> None:
    for enabled in (True, False):
        docs = render(CHART, f"collector.podParserAnnotation={str(enabled).lower()}")
        config, configmap = collector_config(docs)
        kube = next(f for f in config["pipeline"]["filters"] if f["name"] == "kubernetes")
        assert on(kube["k8s-logging.parser"]) is enabled
        # The names docs/logging.md offers exist in the parsers file Fluent Bit loads.
        assert config["service"]["parsers_file"] == "/fluent-bit/config/parsers.conf"
        assert {"json", "logfmt"} <= set(fluent_parsers(configmap))


@pytest.mark.parametrize("level", [1, 2])
def test_every_input_buffers_on_disk_with_limits(rendered, level) -> None:
    docs = rendered[level]
    config, _ = collector_config(docs)
    service = config["service"]
    daemonset = by_kind(docs, "DaemonSet")[0]
    spec = daemonset["spec"]["template"]["spec"]
    container = spec["containers"][0]
    # The buffer lives on a hostPath, so a restarted collector finds what it had not delivered.
    volumes = {v["name"]: v for v in spec["volumes"]}
    host_mounts = [m for m in container["volumeMounts"] if "hostPath" in volumes[m["name"]]]
    storage = Path(service["storage.path"])
    assert any(storage.is_relative_to(m["mountPath"]) and not m.get("readOnly") for m in host_mounts)
    assert all(i.get("storage.type") == "filesystem" for i in config["pipeline"]["inputs"])

    def size(text: str) -> int:
        number, unit = re.fullmatch(r"(\d+)([KMG]?)", str(text)).groups()
        return int(number) * 1024 ** " KMG".index(unit or " ")

    # Memory stays bounded: chunks in memory (about 2 MB each) plus the backlog fit the limit.
    limit = size(container["resources"]["limits"]["memory"].replace("Mi", "M").replace("Gi", "G"))
    assert (
        int(service["storage.max_chunks_up"]) * 2 * 1024**2 + size(service["storage.backlog.mem_limit"])
        < limit
    )
    # Disk stays bounded per source: every input reaches one output with its own limit.
    outputs = config["pipeline"]["outputs"]
    for tag in (i["tag"].replace("*", "x") for i in config["pipeline"]["inputs"]):
        [output] = [o for o in outputs if fnmatch.fnmatchcase(tag, o["match"])]
        assert size(output["storage.total_limit_size"]) > 0, tag
        assert output["retry_limit"] == "no_limits"  # a refused batch waits, it is not dropped
    assert int(service["scheduler.cap"]) <= 300  # delivery resumes within minutes of Loki's return
    assert "mem_buf_limit" not in json.dumps(config["pipeline"]["inputs"])  # ignored with filesystem


@pytest.mark.parametrize("level", [1, 2])
def test_collector_is_ready_while_it_can_receive_syslog(rendered, level) -> None:
    daemonset = by_kind(rendered[level], "DaemonSet")[0]
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p for p in container["ports"]}
    readiness = container["readinessProbe"]
    # A TCP connect to the syslog port: not Fluent Bit's /api/v1/health, which fails after
    # output errors (one batch Loki refused) and would take syslog away from the Service.
    assert set(readiness) - {"periodSeconds", "timeoutSeconds", "failureThreshold", "successThreshold"} == {
        "tcpSocket"
    }
    port = ports[readiness["tcpSocket"]["port"]]
    assert (port["protocol"], port["containerPort"]) == ("TCP", logging_addon.SYSLOG_PORT)
    probes = json.dumps([container.get(p) for p in ("readinessProbe", "livenessProbe", "startupProbe")])
    assert "/api/v1/health" not in probes
    config, _ = collector_config(rendered[level])
    assert "health_check" not in config["service"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/v1/uptime"
    assert (
        ports[container["livenessProbe"]["httpGet"]["port"]]["containerPort"]
        == config["service"]["http_port"]
    )


@pytest.mark.parametrize("level", [1, 2])
def test_collector_tolerates_every_taint_at_node_critical_priority(rendered, level) -> None:
    spec = by_kind(rendered[level], "DaemonSet")[0]["spec"]["template"]["spec"]
    for taint in (
        CONTROLLER_TAINT,
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
        {"key": "clusterous.io/spot", "value": "true", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
    ):
        assert tolerates(spec["tolerations"], taint), taint
    assert spec["priorityClassName"] == "system-node-critical"


def test_loki_starts_quickly_on_nfs_and_survives_a_long_wal_replay(rendered) -> None:
    loki = one(rendered[1], "Deployment", f"{RELEASE}-loki")
    spec = loki["spec"]["template"]["spec"]
    assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    container = spec["containers"][0]
    startup = container["startupProbe"]
    assert startup["httpGet"] == container["livenessProbe"]["httpGet"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800  # replay may take many minutes
    assert "initialDelaySeconds" not in container["livenessProbe"]  # the startup probe gates it
    quick = one(render(CHART, "loki.startupTimeoutSeconds=120"), "Deployment", f"{RELEASE}-loki")
    quick_probe = quick["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert quick_probe["periodSeconds"] * quick_probe["failureThreshold"] == 120


def test_collector_image_comes_from_fluent_bits_own_registry(rendered) -> None:
    container = by_kind(rendered[1], "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("cr.fluentbit.io/fluent/fluent-bit:")


# Grafana's Loki data source (public/app/plugins/datasource/loki/types.ts):
#   enum LokiVariableQueryType { LabelNames, LabelValues }   -> 0, 1
#   interface LokiVariableQuery extends DataQuery { type; label?; stream? }
# and datasource.ts metricFindQuery: no `label` -> no values; a `stream` -> /series for it.
LOKI_LABEL_VALUES = 1
LOKI_VARIABLE_KEYS = {"refId", "type", "label", "stream"}
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')


def stream_matchers(selector: str) -> list[tuple[str, str, str]]:
    """A LogQL stream selector `{a="x", b=~"y"}` as (label, operator, value); AssertionError if malformed."""
    assert selector.startswith("{") and selector.endswith("}"), selector
    body, matchers = selector[1:-1], []
    while body.strip():
        match = MATCHER.match(body)
        assert match, f"not a stream selector: {selector}"
        matchers.append(match.groups())
        body = body[match.end() :]
        assert body == "" or body.startswith(","), selector
        body = body[1:]
    return matchers


def test_dashboard_variables_use_the_loki_variable_query_shape(rendered) -> None:
    docs = rendered[1]
    config, _ = collector_config(docs)
    output = config["pipeline"]["outputs"][0]
    loki_labels_set = {k.lstrip("$") for k in output["label_keys"].split(",")}
    loki_labels_set |= {pair.split("=", 1)[0] for pair in output["labels"].split(",")}
    dashboard = json.loads(
        one(docs, "ConfigMap", f"{RELEASE}-grafana-dashboards")["data"]["clusterous-logs.json"]
    )
    defined: list[str] = []
    query_variables = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["type"] == "loki"
            query = variable["query"]
            assert isinstance(query, dict) and set(query) <= LOKI_VARIABLE_KEYS, query
            assert query["type"] == LOKI_LABEL_VALUES
            assert query["label"] in loki_labels_set  # a label the collector really sets
            for label, _, value in stream_matchers(query["stream"]):
                assert label in loki_labels_set
                for ref in re.findall(r"\$(\w+)", value):
                    assert ref in defined, f"{variable['name']} uses ${ref} before it is defined"
            query_variables.append(variable["name"])
        defined.append(variable["name"])
    assert query_variables == ["source", "app", "component"]
    # Each dropdown filters every panel.
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            selector = re.match(r"[^{]*(\{[^}]*\})", target["expr"]).group(1)
            used = {(label, value) for label, _, value in stream_matchers(selector)}
            assert {(name, f"${name}") for name in query_variables} <= used, target["expr"]


# --- the rendered configuration run by a real Fluent Bit (when one is at hand) ----------------
#
# No registry this project uses packages Fluent Bit, so this runs only where
# $CLUSTEROUS_FLUENT_BIT names a Fluent Bit binary (built from its sources) and is skipped
# elsewhere. It runs the chart's configuration as rendered, changed only where the test machine
# differs from a node: ports, file paths, Loki's address (a stand-in that records pushes), and
# without the container input and the Kubernetes filter (no kubelet or API server here).


class LokiStandIn:
    """An HTTP server recording Loki pushes; `status` is what it answers (204 as Loki does)."""

    def __init__(self) -> None:
        self.status = 204
        self.pushes: list[dict] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/loki/api/v1/push" and stand_in.status == 204:
                    stand_in.pushes.append(json.loads(body))
                self.send_response(stand_in.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def entries(self) -> list[tuple[dict, dict]]:
        """(stream labels, the stored line as JSON) of every pushed entry."""
        return [
            (stream["stream"], json.loads(value[1]))
            for push in self.pushes
            for stream in push["streams"]
            for value in stream["values"]
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def local_fluent_bit_config(tmp_path: Path, loki_port: int, syslog_port: int, http_port: int) -> Path:
    """The chart's level-1 configuration, moved to this machine's paths and ports."""
    docs = render(CHART, "level=1", f"syslog.port={syslog_port}")
    config, configmap = collector_config(docs)
    folder = tmp_path / "config"
    folder.mkdir()
    for name, content in configmap["data"].items():
        (folder / name).write_text(content)
    text = yaml.safe_dump(config)
    text = text.replace("/fluent-bit/config/", f"{folder}/").replace(
        "/var/fluent-bit/state", str(tmp_path / "state")
    )
    config = yaml.safe_load(text)
    config["service"]["http_port"] = http_port
    config["service"]["flush"] = 1
    config["service"]["scheduler.base"] = 1
    config["service"]["scheduler.cap"] = 2
    pipeline = config["pipeline"]
    pipeline["inputs"] = [i for i in pipeline["inputs"] if i["name"] != "tail"]
    pipeline["filters"] = [f for f in pipeline["filters"] if f["name"] != "kubernetes"]
    for output in pipeline["outputs"]:
        output.update(host="127.0.0.1", port=loki_port)
    for section in (config["service"], *pipeline["inputs"], *pipeline["filters"], *pipeline["outputs"]):
        for key, value in section.items():  # YAML 1.1 read `on` as True; Fluent Bit wants the word
            if isinstance(value, bool):
                section[key] = "on" if value else "off"
    path = tmp_path / "fluent-bit.yaml"
    path.write_text(yaml.safe_dump(config))
    (tmp_path / "state").mkdir()
    return path


def wait_for(predicate, timeout: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.fixture
def fluent_bit(tmp_path):
    """The real Fluent Bit on the chart's configuration: (Loki stand-in, syslog port, start(),
    folder, HTTP port); start() runs one and waits until it takes syslog."""
    import os
    import socket

    binary = os.environ.get("CLUSTEROUS_FLUENT_BIT")
    if not binary or not Path(binary).is_file():
        pytest.skip(
            "set CLUSTEROUS_FLUENT_BIT to a Fluent Bit binary (no package of it in Debian, PyPI or npm)"
        )
    loki = LokiStandIn()
    from clusterous_cli import tunnels

    syslog_port, http_port = tunnels.free_port(), tunnels.free_port()
    config = local_fluent_bit_config(tmp_path, loki.port, syslog_port, http_port)
    procs = []

    def start() -> subprocess.Popen:
        log = open(tmp_path / f"fluent-bit-{len(procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [binary, "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NODE_NAME": "collector-node"},
        )
        procs.append(proc)

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", syslog_port)) == 0

        assert wait_for(listening), (tmp_path / f"fluent-bit-{len(procs) - 1}.log").read_text()
        return proc

    try:
        yield loki, syslog_port, start, tmp_path, http_port
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        loki.close()


def send_samples(port: int) -> list[str]:
    """Send one line of each format over UDP and TCP with the real senders; returns the texts."""
    import logging
    import logging.handlers
    import socket

    from tests.harness.tools import system_tool

    logger = system_tool("logger")
    subprocess.run([logger, "-n", "127.0.0.1", "-P", str(port), "-t", "billing", "five424 udp"], check=True)
    subprocess.run(
        [logger, "-T", "-n", "127.0.0.1", "-P", str(port), "-t", "billing", "five424 tcp"], check=True
    )
    subprocess.run(
        [logger, "--rfc3164", "-n", "127.0.0.1", "-P", str(port), "-t", "billing", "three164 udp"], check=True
    )
    for socktype, word in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
        handler = logging.handlers.SysLogHandler(address=("127.0.0.1", port), socktype=socktype)
        log = logging.Logger("app")
        log.addHandler(handler)
        log.warning(f"python bare {word}")
        handler.ident = "worker: "
        log.warning(f"python ident {word}")
        handler.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"<13>Mar  7 09:05:01 web-7d9f4 nginx[7]: rsyslog forwarded", ("127.0.0.1", port))
        s.sendto(b"no priority at all", ("127.0.0.1", port))
    return [
        "five424 udp", "five424 tcp", "three164 udp", "python bare udp", "python ident udp",
        "python bare tcp", "python ident tcp", "rsyslog forwarded", "no priority at all",
    ]  # fmt: skip


def test_real_fluent_bit_keeps_every_syslog_line(fluent_bit) -> None:
    import socket

    loki, port, start, _, _ = fluent_bit
    start()
    texts = send_samples(port)
    assert wait_for(lambda: len(loki.entries()) >= len(texts)), loki.entries()
    by_text = {line.get("message"): (labels, line) for labels, line in loki.entries()}
    assert set(texts) <= set(by_text), sorted(by_text)
    for text in texts:
        labels, line = by_text[text]
        assert labels["job"] == "clusterous" and labels["source"] == "syslog", text
        assert labels["node"] != "collector-node", text
    assert by_text["five424 udp"][0]["app"] == "billing"
    assert by_text["five424 udp"][0]["node"] == socket.gethostname()
    assert by_text["python ident udp"][0]["app"] == "worker"
    assert by_text["python bare udp"][0]["node"] == "127.0.0.1"  # no host in the line: the sender's address
    rsyslog = by_text["rsyslog forwarded"][0]
    assert (rsyslog["node"], rsyslog["app"]) == ("web-7d9f4", "nginx")
    assert by_text["no priority at all"][1]["message"] == "no priority at all"


def test_real_fluent_bit_buffers_on_disk_through_a_loki_outage_and_a_restart(fluent_bit) -> None:
    loki, port, start, tmp_path, _ = fluent_bit
    loki.status = 503  # Loki restarting
    first = start()
    texts = send_samples(port)
    buffer = tmp_path / "state" / "buffer"

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in buffer.rglob("*.flb"))

    assert wait_for(lambda: all(t.encode() in on_disk() for t in texts)), list(buffer.rglob("*"))
    first.kill()  # the collector dies too (SIGKILL), before anything was delivered
    first.wait()
    assert loki.entries() == []
    loki.status = 204  # Loki is back
    start()
    assert wait_for(lambda: {line.get("message") for _, line in loki.entries()} >= set(texts)), loki.entries()


def test_real_fluent_bit_keeps_receiving_when_loki_refuses_a_batch(fluent_bit) -> None:
    import socket

    loki, port, start, _, http_port = fluent_bit
    loki.status = 400  # e.g. a line older than Loki accepts: not retried
    start()
    send_samples(port)
    loki.status = 204
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"<14>after the refusal", ("127.0.0.1", port))
    assert wait_for(lambda: "after the refusal" in {line.get("message") for _, line in loki.entries()})
    with socket.socket() as s:  # what the readiness probe checks
        assert s.connect_ex(("127.0.0.1", port)) == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/v1/uptime", timeout=10) as response:
        assert response.status == 200  # what the liveness probe checks


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
