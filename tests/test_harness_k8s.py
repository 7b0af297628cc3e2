"""The Kubernetes API emulator works for the clients we use: kubernetes, kopf and kubectl."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import textwrap
import threading

import kopf.testing as kopf_testing
import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.harness.k8s import (
    K8sApi,
    merge_patch,
    parse_path,
    selector_matches,
    strategic_merge,
)

GROUP, VERSION, PLURAL = "example.clusterous.dev", "v1", "capps"
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "capp", "kind": "CApp", "shortNames": ["capp"]},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


@pytest.fixture()
def client(k8s_api: K8sApi):
    """A `kubernetes` ApiClient configured from the emulator's kubeconfig file."""
    api_client = kubernetes.config.new_client_from_config(config_file=str(k8s_api.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture()
def crd(client) -> dict:
    kubernetes.client.ApiextensionsV1Api(client).create_custom_resource_definition(CRD)
    return CRD


def capp(name: str, size: int = 1, **metadata) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CApp",
        "metadata": {"name": name, **metadata},
        "spec": {"size": size},
    }


def status_of(call) -> ApiException:
    with pytest.raises(ApiException) as info:
        call()
    return info.value


# -- pure helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("role=worker", True),
        ("role==worker", True),
        ("role!=worker", False),
        ("role in (master, worker)", True),
        ("role notin (master,worker)", False),
        ("role", True),
        ("!role", False),
        ("zone", False),
        ("role=worker,!zone,tier in (a)", True),
        ("role=worker,tier notin (a)", False),
    ],
)
def test_label_selectors(selector: str, expected: bool) -> None:
    obj = {"metadata": {"name": "n", "labels": {"role": "worker", "tier": "a"}}}
    assert selector_matches(obj, selector, None) is expected


def test_field_selectors_on_name_and_namespace() -> None:
    obj = {"metadata": {"name": "a", "namespace": "ns1"}}
    assert selector_matches(obj, None, "metadata.name=a,metadata.namespace=ns1")
    assert not selector_matches(obj, None, "metadata.name!=a")
    assert not selector_matches(obj, None, "metadata.namespace=other")


def test_paths_of_namespaces_are_the_namespace_resource() -> None:
    assert (parse_path("/api/v1/namespaces").plural, parse_path("/api/v1/namespaces").name) == (
        "namespaces",
        None,
    )
    named = parse_path("/api/v1/namespaces/dev")
    assert (named.plural, named.name, named.namespace) == ("namespaces", "dev", None)
    status = parse_path("/api/v1/namespaces/dev/status")
    assert (status.plural, status.name, status.subresource) == ("namespaces", "dev", "status")
    inner = parse_path("/apis/apps/v1/namespaces/dev/deployments/web/status")
    assert (inner.group, inner.namespace, inner.plural, inner.name, inner.subresource) == (
        "apps",
        "dev",
        "deployments",
        "web",
        "status",
    )


def test_merge_and_strategic_patches() -> None:
    old = {"spec": {"a": 1, "b": 2, "containers": [{"name": "x", "image": "1", "ports": [80]}]}}
    assert merge_patch(old, {"spec": {"a": None, "c": 3}}) == {
        "spec": {"b": 2, "c": 3, "containers": old["spec"]["containers"]}
    }
    patch = {
        "spec": {"$setElementOrder/containers": [{"name": "x"}], "containers": [{"name": "x", "image": "2"}]}
    }
    assert strategic_merge(old, patch)["spec"]["containers"] == [{"name": "x", "image": "2", "ports": [80]}]
    delete = {"spec": {"containers": [{"name": "x", "$patch": "delete"}]}}
    assert strategic_merge(old, delete)["spec"]["containers"] == []


# -- the kubernetes client -----------------------------------------------------------------


def test_server_fills_metadata_and_answers_201(client) -> None:
    core = kubernetes.client.CoreV1Api(client)
    created, code, _ = core.create_namespaced_config_map_with_http_info(
        "default", {"metadata": {"generateName": "cm-"}}
    )
    assert code == 201
    meta = created.metadata
    assert meta.name.startswith("cm-") and len(meta.name) > len("cm-")
    assert meta.namespace == "default" and meta.uid and meta.resource_version and meta.generation == 1
    assert meta.creation_timestamp is not None
    again = core.read_namespaced_config_map(meta.name, "default")
    assert again.metadata.uid == meta.uid


def test_standard_errors(client) -> None:
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"k": "1"}})
    exists = status_of(lambda: core.create_namespaced_config_map("default", {"metadata": {"name": "c"}}))
    assert exists.status == 409 and json.loads(exists.body)["reason"] == "AlreadyExists"
    missing = status_of(lambda: core.read_namespaced_config_map("nope", "default"))
    assert missing.status == 404 and json.loads(missing.body)["reason"] == "NotFound"
    stale = {"metadata": {"name": "c", "resourceVersion": "1"}, "data": {"k": "2"}}
    conflict = status_of(lambda: core.replace_namespaced_config_map("c", "default", stale))
    assert conflict.status == 409 and json.loads(conflict.body)["reason"] == "Conflict"
    nameless = status_of(lambda: core.create_namespaced_config_map("default", {"metadata": {}}))
    assert nameless.status == 422 and json.loads(nameless.body)["reason"] == "Invalid"
    no_ns = status_of(lambda: core.create_namespaced_config_map("ghost", {"metadata": {"name": "c"}}))
    assert no_ns.status == 404


def test_replace_merge_patch_and_json_patch(client) -> None:
    core = kubernetes.client.CoreV1Api(client)
    created = core.create_namespaced_config_map(
        "default", {"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}
    )
    current = core.read_namespaced_config_map("c", "default")
    current.data = {"a": "replaced"}
    replaced = core.replace_namespaced_config_map("c", "default", current)
    assert replaced.data == {"a": "replaced"}
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)

    merged = core.patch_namespaced_config_map(
        "c", "default", {"data": {"a": None, "c": "3"}}, _content_type="application/merge-patch+json"
    )
    assert merged.data == {"c": "3"}

    ops = [{"op": "test", "path": "/data/c", "value": "3"}, {"op": "add", "path": "/data/d", "value": "4"}]
    assert core.patch_namespaced_config_map("c", "default", ops).data == {"c": "3", "d": "4"}
    failing = [{"op": "test", "path": "/data/c", "value": "wrong"}, {"op": "remove", "path": "/data/c"}]
    error = status_of(lambda: core.patch_namespaced_config_map("c", "default", failing))
    assert error.status == 422 and json.loads(error.body)["reason"] == "Invalid"
    assert core.read_namespaced_config_map("c", "default").data == {"c": "3", "d": "4"}


def test_status_subresource_and_generation(client) -> None:
    """A CronJob: a kind with a status subresource that no emulated controller writes."""
    batch = kubernetes.client.BatchV1Api(client)
    container = {"name": "app", "image": "busybox:1.37"}
    template = {"spec": {"restartPolicy": "Never", "containers": [container]}}
    body = {
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": template}}},
        "status": {"lastScheduleTime": "2025-01-01T00:00:00Z"},
    }
    created = batch.create_namespaced_cron_job("default", body)
    assert created.status is None or created.status.last_schedule_time is None  # not writable on create
    stamp = "2025-02-01T03:00:00Z"
    with_status = batch.patch_namespaced_cron_job_status(
        "nightly", "default", {"status": {"lastScheduleTime": stamp}}
    )
    assert with_status.status.last_schedule_time.isoformat().startswith("2025-02-01T03")
    assert with_status.metadata.generation == 1
    ignored = batch.patch_namespaced_cron_job(
        "nightly",
        "default",
        {"status": {"lastScheduleTime": "2030-01-01T00:00:00Z"}},
        _content_type="application/merge-patch+json",
    )
    assert ignored.status.last_schedule_time.year == 2025 and ignored.metadata.generation == 1
    suspended = batch.patch_namespaced_cron_job("nightly", "default", {"spec": {"suspend": True}})
    assert suspended.spec.suspend and suspended.metadata.generation == 2
    assert suspended.status.last_schedule_time.year == 2025
    status_write = batch.patch_namespaced_cron_job_status("nightly", "default", {"spec": {"suspend": False}})
    assert status_write.spec.suspend is True


def test_nodes_list_with_label_and_field_selectors(k8s_api: K8sApi, client) -> None:
    k8s_api.add_node("w1", {"role": "worker"}, cpu=4)
    k8s_api.add_node("w2", {"role": "worker", "spot": "yes"}, cpu=8, ready=False)
    k8s_api.add_node("m1", {"role": "master"})
    core = kubernetes.client.CoreV1Api(client)

    def names(**kwargs) -> list[str]:
        result = core.list_node(**kwargs)
        assert result.kind == "NodeList" and result.api_version == "v1"
        return sorted(n.metadata.name for n in result.items)

    assert names() == ["m1", "w1", "w2"]
    assert names(label_selector="role=worker") == ["w1", "w2"]
    assert names(label_selector="role!=worker") == ["m1"]
    assert names(label_selector="role in (master),!spot") == ["m1"]
    assert names(label_selector="role notin (master),spot") == ["w2"]
    assert names(field_selector="metadata.name=w1") == ["w1"]
    w2 = core.read_node("w2")
    assert w2.status.capacity["cpu"] == "8" and w2.status.conditions[0].status == "False"


def test_namespaces_are_served(client) -> None:
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespace({"metadata": {"name": "dev"}})
    assert "dev" in {ns.metadata.name for ns in core.list_namespace().items}
    assert core.read_namespace("dev").status.phase == "Active"
    core.create_namespaced_config_map("dev", {"metadata": {"name": "c"}})
    assert [c.metadata.namespace for c in core.list_config_map_for_all_namespaces().items] == ["dev"]


def test_watch_replays_from_resource_version_and_times_out(client) -> None:
    core = kubernetes.client.CoreV1Api(client)
    start = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", {"metadata": {"name": "c", "labels": {"w": "y"}}})
    core.create_namespaced_config_map("default", {"metadata": {"name": "other"}})
    core.patch_namespaced_config_map("c", "default", {"data": {"k": "v"}})
    core.delete_namespaced_config_map("c", "default")
    stream = kubernetes.watch.Watch().stream(
        core.list_namespaced_config_map,
        "default",
        resource_version=start,
        label_selector="w=y",
        timeout_seconds=1,
    )
    events = [(e["type"], e["object"].metadata.name) for e in stream]  # ends by the server's timeout
    assert events == [("ADDED", "c"), ("MODIFIED", "c"), ("DELETED", "c")]


def test_live_watch_sees_added_modified_deleted(k8s_api: K8sApi, client) -> None:
    core = kubernetes.client.CoreV1Api(client)
    k8s_api.add_node("n1")
    seen: list[tuple[str, str]] = []
    watch = kubernetes.watch.Watch()

    def consume() -> None:
        for event in watch.stream(core.list_node, timeout_seconds=20):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    k8s_api.wait_for(lambda: ("ADDED", "n1") in seen, what="the initial ADDED event")
    core.patch_node("n1", {"metadata": {"labels": {"x": "y"}}})
    core.delete_node("n1")
    thread.join(10)
    assert seen == [("ADDED", "n1"), ("MODIFIED", "n1"), ("DELETED", "n1")]


def test_crd_makes_custom_resources_served(k8s_api: K8sApi, client, crd) -> None:
    resources = kubernetes.client.ApisApi(client).get_api_versions()
    assert GROUP in {g.name for g in resources.groups}
    discovered = kubernetes.client.CustomObjectsApi(client).get_api_resources(GROUP, VERSION)
    by_name = {r.name: r for r in discovered.resources}
    assert (
        by_name[PLURAL].namespaced
        and by_name[PLURAL].short_names == ["capp"]
        and f"{PLURAL}/status" in by_name
    )

    custom = kubernetes.client.CustomObjectsApi(client)
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, capp("a", labels={"t": "1"})
    )
    assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, capp("b"))
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, label_selector="t=1")
    assert listed["kind"] == "CAppList" and [i["metadata"]["name"] for i in listed["items"]] == ["a"]

    patched = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "a",
        {"spec": {"size": 5}},
        _content_type="application/merge-patch+json",
    )
    assert patched["spec"]["size"] == 5 and patched["metadata"]["generation"] == 2
    status = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "a",
        {"status": {"phase": "Ready"}},
        _content_type="application/merge-patch+json",
    )
    assert status["status"] == {"phase": "Ready"} and status["metadata"]["generation"] == 2
    ops = [{"op": "test", "path": "/spec/size", "value": 1}]
    error = status_of(
        lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, "a", ops, _content_type="application/json-patch+json"
        )
    )
    assert error.status == 422

    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "b")
    gone = status_of(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "b"))
    assert gone.status == 404
    assert k8s_api.get("capp", "a")["status"] == {"phase": "Ready"}


def test_custom_resource_watch(client, crd) -> None:
    custom = kubernetes.client.CustomObjectsApi(client)
    start = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"][
        "resourceVersion"
    ]
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, capp("a"))
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "a",
        {"spec": {"size": 2}},
        _content_type="application/merge-patch+json",
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
    stream = kubernetes.watch.Watch().stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "default",
        PLURAL,
        resource_version=start,
        timeout_seconds=1,
    )
    assert [(e["type"], e["object"]["spec"]["size"]) for e in stream] == [
        ("ADDED", 1),
        ("MODIFIED", 2),
        ("DELETED", 2),
    ]


def test_finalizers_hold_deletion_until_removed(k8s_api: K8sApi, client, crd) -> None:
    custom = kubernetes.client.CustomObjectsApi(client)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, capp("a", finalizers=["test/hold"])
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
    held = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["test/hold"]
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "a",
        {"metadata": {"finalizers": None}},
        _content_type="application/merge-patch+json",
    )
    assert k8s_api.get("capp", "a") is None
    assert k8s_api.history("capp", "a")[-1] is None  # kmock's history records the deletion


# -- kopf ------------------------------------------------------------------------------------

OPERATOR = textwrap.dedent(
    f"""
    import os

    import kopf
    import kubernetes

    def core():
        # KUBECONFIG is read here: the kubernetes package captured its default at import time.
        config = kubernetes.config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
        return kubernetes.client.CoreV1Api(config)

    @kopf.on.login()
    def login(**kwargs):
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup()
    def configure(settings, **_):
        settings.watching.server_timeout = 5
        settings.posting.level = 100  # no k8s Events: keep the test quiet and fast

    @kopf.on.create("{GROUP}", "{VERSION}", "{PLURAL}")
    def create_child(name, namespace, spec, patch, **_):
        child = {{"metadata": {{"name": name + "-child"}}, "data": {{"size": str(spec["size"])}}}}
        core().create_namespaced_config_map(namespace, child)
        patch.status["phase"] = "Ready"

    @kopf.on.delete("{GROUP}", "{VERSION}", "{PLURAL}")
    def delete_child(name, namespace, **_):
        core().delete_namespaced_config_map(name + "-child", namespace)
    """
)


def test_kopf_operator_runs_against_the_emulator(k8s_api: K8sApi, client, crd, tmp_path, monkeypatch) -> None:
    operator = tmp_path / "operator.py"
    operator.write_text(OPERATOR)
    monkeypatch.setenv("KUBECONFIG", str(k8s_api.kubeconfig))
    custom = kubernetes.client.CustomObjectsApi(client)
    args = ["run", "--standalone", "--namespace=default", str(operator)]
    with kopf_testing.KopfRunner(args, timeout=60) as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, capp("app1", size=3))
        k8s_api.wait_for(
            lambda: (k8s_api.get("capp", "app1") or {}).get("status", {}).get("phase") == "Ready"
        )
        child = k8s_api.get("configmaps", "app1-child")
        assert child["data"] == {"size": "3"}
        assert k8s_api.get("capp", "app1")["metadata"]["finalizers"]
        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "app1")
        k8s_api.wait_for(lambda: k8s_api.get("capp", "app1") is None, what="the finalizer to be released")
        assert k8s_api.get("configmaps", "app1-child") is None
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None
    history = k8s_api.history("capp", "app1")
    marked = [v for v in history if v and v["metadata"].get("deletionTimestamp")]
    assert marked and marked[0]["metadata"]["finalizers"]  # deletion waited for kopf's finalizer


# -- kubectl ---------------------------------------------------------------------------------

CONFIGMAP = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: demo}
data:
  mode: "MODE"
"""


def test_kubectl_apply_get_and_delete(k8s_api: K8sApi, kubectl) -> None:
    assert (
        "configmap/settings created"
        in kubectl("apply", "-f", "-", input=CONFIGMAP.replace("MODE", "a")).stdout
    )
    assert "configured" in kubectl("apply", "-f", "-", input=CONFIGMAP.replace("MODE", "b")).stdout
    assert k8s_api.get("configmaps", "settings")["data"] == {"mode": "b"}
    listed = json.loads(kubectl("get", "configmaps", "-l", "app=demo", "-o", "json").stdout)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["settings"]
    assert "settings" in kubectl("get", "cm").stdout
    kubectl("delete", "configmap", "settings")
    assert k8s_api.get("configmaps", "settings") is None
    missing = kubectl("get", "cm", "settings", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_kubectl_crd_short_name_and_server_side_apply(k8s_api: K8sApi, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(CRD))
    kubectl("apply", "-f", "-", input=json.dumps(capp("one", size=1)))
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(capp("two", size=2)))
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(capp("two", size=4)))
    names = kubectl("get", "capp", "-o", "name").stdout.split()
    assert names == [f"capp.{GROUP}/one", f"capp.{GROUP}/two"]
    two = json.loads(kubectl("get", "capp", "two", "-o", "json").stdout)
    assert two["spec"]["size"] == 4 and two["metadata"]["generation"] == 2


def read_line(process: subprocess.Popen, timeout: float = 15) -> str:
    """One line of a running process's output, failing instead of hanging."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"no output from kubectl within {timeout}s")
    return process.stdout.readline().strip()


def test_kubectl_get_watch_sees_a_change(k8s_api: K8sApi, kubectl) -> None:
    k8s_api.add_node("n1")
    process = kubectl.popen(
        "get", "nodes", "-w", "-o", "jsonpath={.metadata.name}={.metadata.labels.role}{'\\n'}"
    )
    try:
        assert read_line(process) == "n1="
        k8s_api.patch("nodes", "n1", {"metadata": {"labels": {"role": "gpu"}}})
        assert read_line(process) == "n1=gpu"
    finally:
        process.terminate()
        process.wait(10)


def test_deleting_the_crd_stops_serving_it(client, crd) -> None:
    kubernetes.client.ApiextensionsV1Api(client).delete_custom_resource_definition(CRD["metadata"]["name"])
    custom = kubernetes.client.CustomObjectsApi(client)
    error = status_of(lambda: custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL))
    assert error.status == 404


def test_kmock_reactions_inject_faults_before_the_emulation(k8s_api: K8sApi, client) -> None:
    k8s_api.add_node("n1")
    core = kubernetes.client.CoreV1Api(client)
    k8s_api.call(lambda emulator: emulator["get /api/v1/nodes"][:1] << 503)
    assert status_of(core.list_node).status == 503
    assert [n.metadata.name for n in core.list_node().items] == ["n1"]  # the reaction is used up


# -- pod logs and exec (the kubelet's part) --------------------------------------------------


def make_pod(k8s_api: K8sApi, name: str, containers: tuple[str, ...] = ("main",), **env: str) -> None:
    specs = [
        {"name": c, "image": "example/app:1", "env": [{"name": k, "value": v} for k, v in env.items()]}
        for c in containers
    ]
    k8s_api.create(
        "v1/pods", {"metadata": {"name": name}, "spec": {"containers": specs}}, namespace="default"
    )


def test_pod_log_with_tail_timestamps_and_containers(k8s_api: K8sApi, client) -> None:
    core = kubernetes.client.CoreV1Api(client)
    make_pod(k8s_api, "web")
    k8s_api.write_pod_log("default", "web", "one\ntwo\n")
    k8s_api.write_pod_log("default", "web", b"three")  # a last line without its newline
    assert core.read_namespaced_pod_log("web", "default") == "one\ntwo\nthree\n"
    assert core.read_namespaced_pod_log("web", "default", tail_lines=2) == "two\nthree\n"
    assert core.read_namespaced_pod_log("web", "default", tail_lines=0) == ""

    stamped = core.read_namespaced_pod_log("web", "default", timestamps=True).splitlines()
    stamps = [line.split(" ", 1)[0] for line in stamped]
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two", "three"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", s) for s in stamps)
    assert stamps == sorted(stamps) and stamps[0] == stamps[1] < stamps[2]  # one write, one stamp

    make_pod(k8s_api, "duo", containers=("app", "sidecar"))
    k8s_api.write_pod_log("default", "duo", "from app\n", container="app")
    k8s_api.write_pod_log("default", "duo", "from sidecar\n", container="sidecar")
    assert core.read_namespaced_pod_log("duo", "default", container="sidecar") == "from sidecar\n"
    unnamed = status_of(lambda: core.read_namespaced_pod_log("duo", "default"))
    assert unnamed.status == 400 and "choose one of: [app sidecar]" in unnamed.body
    assert status_of(lambda: core.read_namespaced_pod_log("web", "default", container="nope")).status == 400
    assert status_of(lambda: core.read_namespaced_pod_log("ghost", "default")).status == 404

    k8s_api.delete("v1/pods", "web")
    make_pod(k8s_api, "web")  # a new pod of the same name starts with an empty log
    assert core.read_namespaced_pod_log("web", "default") == ""


def test_pod_log_follow_streams_until_the_pod_is_deleted(k8s_api: K8sApi, client) -> None:
    core = kubernetes.client.CoreV1Api(client)
    make_pod(k8s_api, "web")
    k8s_api.write_pod_log("default", "web", "old 1\nold 2\n")
    response = core.read_namespaced_pod_log(
        "web", "default", follow=True, tail_lines=1, _preload_content=False
    )
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(response.stream(65536)), daemon=True)
    reader.start()
    k8s_api.wait_for(lambda: b"".join(chunks) == b"old 2\n", what="the tail")
    k8s_api.write_pod_log("default", "web", "new 1\n")
    k8s_api.wait_for(lambda: b"".join(chunks) == b"old 2\nnew 1\n", what="the appended line")
    assert reader.is_alive()
    k8s_api.delete("v1/pods", "web")
    reader.join(15)
    assert not reader.is_alive() and b"".join(chunks) == b"old 2\nnew 1\n"


def test_pod_log_follow_ends_when_the_container_terminates(k8s_api: K8sApi, client) -> None:
    """As the kubelet does for a finished container (a build Job's pod): the follow returns."""
    core = kubernetes.client.CoreV1Api(client)
    make_pod(k8s_api, "job")
    k8s_api.write_pod_log("default", "job", "step 1\n")
    response = core.read_namespaced_pod_log("job", "default", follow=True, _preload_content=False)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(response.stream(65536)), daemon=True)
    reader.start()
    k8s_api.wait_for(lambda: b"".join(chunks) == b"step 1\n", what="the first line")
    k8s_api.write_pod_log("default", "job", "done\n")
    k8s_api.write_status("v1/pods", "job", {"phase": "Succeeded"}, namespace="default")
    reader.join(15)
    assert not reader.is_alive() and b"".join(chunks) == b"step 1\ndone\n"
    assert k8s_api.get("v1/pods", "job", "default") is not None  # ended by the container, not deleted


def exec_session(client, pod: str, command: list[str], **flags):
    from kubernetes.stream import stream

    options = {"stdin": False, "stdout": True, "stderr": True, "tty": False} | flags
    return stream(
        kubernetes.client.CoreV1Api(client).connect_get_namespaced_pod_exec,
        pod,
        "default",
        command=command,
        _preload_content=False,
        **options,
    )


def test_exec_runs_the_command_with_stdin_and_reports_its_exit_status(k8s_api: K8sApi, client) -> None:
    make_pod(k8s_api, "web", ROLE="frontend")
    session = exec_session(
        client, "web", ["sh", "-c", "echo $ROLE@$HOSTNAME; tr a-z A-Z; echo oops >&2; exit 3"], stdin=True
    )
    assert session.subprotocol == "v5.channel.k8s.io"
    session.write_stdin("piped through\n")
    session.close_channel(0)  # v5: end of stdin, so `tr` ends
    session.run_forever(timeout=15)
    assert session.returncode == 3  # read channel 3 before read_all() clears the channels
    assert session.read_stdout() == "frontend@web\nPIPED THROUGH\n"
    assert session.read_stderr() == "oops\n"

    ok = exec_session(client, "web", ["true"])
    ok.run_forever(timeout=15)
    assert ok.returncode == 0

    missing = exec_session(client, "web", ["no-such-command"])
    missing.run_forever(timeout=15)
    assert missing.returncode == 126 and "no-such-command" in missing.read_stderr()


def test_exec_with_a_tty_follows_resizes(k8s_api: K8sApi, client) -> None:
    make_pod(k8s_api, "web")
    session = exec_session(client, "web", ["sh", "-c", "read go; stty size; tty"], stdin=True, tty=True)
    session.write_channel(4, json.dumps({"Width": 120, "Height": 40}))
    session.write_stdin("go\r")
    session.run_forever(timeout=15)
    assert session.returncode == 0
    lines = session.read_stdout().splitlines()
    assert "40 120" in lines and any(line.startswith("/dev/pts/") for line in lines)


def raw_exec(k8s_api: K8sApi, path: str, protocols: list[str]):
    """A WebSocket to the emulator as any client would open it (websocket-client)."""
    import websocket

    url = k8s_api.url.replace("http://", "ws://") + path
    return websocket.create_connection(url, subprotocols=protocols, timeout=15)


def test_exec_protocol_negotiation_and_refusals(k8s_api: K8sApi) -> None:
    import urllib.error
    import urllib.request

    import websocket

    make_pod(k8s_api, "web")
    path = (
        "/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=echo+hi%3B+exit+2&stdout=true"
    )
    v4 = raw_exec(k8s_api, path, ["base64.channel.k8s.io", "v4.channel.k8s.io"])
    assert v4.getsubprotocol() == "v4.channel.k8s.io"
    frames = []
    while (frame := v4.recv_data_frame(True))[0] != websocket.ABNF.OPCODE_CLOSE:
        frames.append(frame[1].data)
    v4.close()
    assert frames[0] == b"\x01hi\n"
    status = json.loads(frames[-1][1:])
    assert frames[-1][0] == 3 and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "2"}]

    with pytest.raises(websocket.WebSocketBadStatusException) as unsupported:
        raw_exec(k8s_api, path, ["base64.channel.k8s.io"])
    assert unsupported.value.status_code == 400
    with pytest.raises(websocket.WebSocketBadStatusException) as ghost:
        raw_exec(k8s_api, path.replace("/web/", "/ghost/"), ["v4.channel.k8s.io"])
    assert ghost.value.status_code == 404
    with pytest.raises(websocket.WebSocketBadStatusException) as no_command:
        raw_exec(k8s_api, "/api/v1/namespaces/default/pods/web/exec?stdout=true", ["v4.channel.k8s.io"])
    assert no_command.value.status_code == 400
    with pytest.raises(urllib.error.HTTPError) as plain:
        urllib.request.urlopen(k8s_api.url + path, timeout=15)
    assert plain.value.code == 400 and b"Upgrade request required" in plain.value.read()


def test_exec_process_is_killed_when_the_client_leaves(k8s_api: K8sApi, client) -> None:
    make_pod(k8s_api, "web")
    session = exec_session(client, "web", ["sh", "-c", "echo $$; exec sleep 60"])
    pid = int(session.readline_stdout(timeout=15))
    session.close()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    k8s_api.wait_for(gone, what=f"exec'd process {pid} to be killed")


def test_kubectl_exec_and_logs(k8s_api: K8sApi, kubectl) -> None:
    make_pod(k8s_api, "web")
    k8s_api.write_pod_log("default", "web", "line 1\nline 2\n")
    assert kubectl("logs", "web", "--tail=1").stdout == "line 2\n"
    # exec reads the pod first: after a text/plain log, objects must still come back as JSON
    result = kubectl("exec", "-i", "web", "--", "sh", "-c", "cat; exit 5", input="via kubectl\n", check=False)
    assert result.returncode == 5
    assert result.stdout == "via kubectl\n" and "exit code 5" in result.stderr


def test_a_read_overtaken_by_another_writer_meets_409_on_replace(k8s_api: K8sApi, client) -> None:
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    k8s_api.overtake_reads("v1/configmaps", "c")
    read = core.read_namespaced_config_map("c", "default")
    read.data = {"a": "2"}
    with pytest.raises(kubernetes.client.ApiException) as refused:
        core.replace_namespaced_config_map("c", "default", read)
    assert refused.value.status == 409 and json.loads(refused.value.body)["reason"] == "Conflict"
    again = core.read_namespaced_config_map("c", "default")  # read afresh: nobody overtakes it now
    again.data = {"a": "2"}
    assert core.replace_namespaced_config_map("c", "default", again).data == {"a": "2"}


def test_a_watch_from_a_compacted_version_ends_with_410_expired(k8s_api: K8sApi, client) -> None:
    core = kubernetes.client.CoreV1Api(client)
    old = core.create_namespaced_config_map("default", {"metadata": {"name": "c"}}).metadata.resource_version
    core.patch_namespaced_config_map("c", "default", {"data": {"a": "1"}})
    k8s_api.compact()
    response = core.list_namespaced_config_map(
        "default", watch=True, resource_version=old, timeout_seconds=2, _preload_content=False
    )
    events = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert events == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {old} ({k8s_api.call(lambda e: e._compacted)})",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]
    kubernetes_watch = kubernetes.watch.Watch()  # the client's own watcher turns it into an ApiException
    with pytest.raises(kubernetes.client.ApiException) as gone:
        for _ in kubernetes_watch.stream(core.list_namespaced_config_map, "default", resource_version=old):
            pass
    assert gone.value.status == 410
