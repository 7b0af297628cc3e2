"""The emulator refuses what kube-apiserver refuses: names, labels, CRD schemas and CEL rules
(422 Invalid), and requests a ServiceAccount's RBAC does not allow (403 Forbidden)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import kubernetes
import pytest
import requests
import yaml
from kubernetes.client.exceptions import ApiException

from tests.addons_support import rendered_manifest
from tests.harness.k8s import K8sApi, Kubectl
from tests.harness.k8s_admission import (
    dns1035_label,
    dns1123_label,
    label_value,
    service_account_kubeconfig,
    service_account_token,
)

os.environ.setdefault("CLUSTEROUS_RESYNC_SECONDS", "0.5")  # read when the handlers are imported

ROOT = Path(__file__).resolve().parents[1]
CRD = yaml.safe_load((ROOT / "operator/clusterous_operator/crd.yaml").read_text())
GROUP, VERSION, PLURAL = "clusterous.io", "v1alpha1", "clusterapps"
OPERATOR = "system:serviceaccount:clusterous-system:clusterous-operator"
DNS1035 = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
    "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def client_for(kubeconfig: Path):
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture()
def admin(k8s_api: K8sApi):
    api_client = client_for(k8s_api.kubeconfig)
    yield api_client
    api_client.close()


@pytest.fixture()
def crd(k8s_api: K8sApi) -> dict:
    k8s_api.create("apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
    return CRD


def refused(call) -> ApiException:
    with pytest.raises(ApiException) as info:
        call()
    return info.value


def status_body(exc: ApiException) -> dict:
    return yaml.safe_load(exc.body)


def clusterapp(name: str = "demo", **spec) -> dict:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterApp",
        "metadata": {"name": name},
        "spec": {"components": [{"name": "master", "group": "master", "image": "basic-python"}]},
    }
    body["spec"].update(spec)
    return body


# -- names and labels ----------------------------------------------------------------------


def test_name_rules_match_the_api_server() -> None:
    assert dns1035_label("2024-sim") == [DNS1035]
    assert dns1035_label("sim-2024") == []
    assert dns1123_label("a.b") == ["must not contain dots"]
    assert label_value("x" * 64) == ["must be no more than 63 bytes"]
    assert label_value("Worker_1.a") == []


def service(name: str) -> str:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"port": 80}]},
    }
    return yaml.safe_dump(body)


def test_kubectl_create_service_named_2024_sim_is_refused(k8s_api: K8sApi, kubectl: Kubectl) -> None:
    # (kubectl's `create service` generator posts protobuf, which the emulator does not read.)
    result = kubectl("create", "-f", "-", input=service("2024-sim"), check=False)
    assert result.returncode == 1
    assert (
        f'The Service "2024-sim" is invalid: metadata.name: Invalid value: "2024-sim": {DNS1035}'
        in result.stderr
    )
    assert k8s_api.get("v1/services", "2024-sim") is None
    kubectl("create", "-f", "-", input=service("sim-2024"))
    # Other kinds take DNS-1123 subdomains, which may start with a digit.
    kubectl(
        "create",
        "-f",
        "-",
        input=yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "2024-sim"}}),
    )


def test_names_per_kind_and_labels(admin) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    exc = refused(lambda: core.create_namespace({"metadata": {"name": "team.a"}}))
    assert exc.status == 422
    body = status_body(exc)
    assert body["reason"] == "Invalid"
    assert (
        body["message"]
        == 'Namespace "team.a" is invalid: metadata.name: Invalid value: "team.a": must not contain dots'
    )
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "team.a": must not contain dots',
            "field": "metadata.name",
        }
    ]
    exc = refused(lambda: core.create_namespaced_config_map("default", {"metadata": {"name": "My_Config"}}))
    assert "a lowercase RFC 1123 subdomain must consist of" in status_body(exc)["message"]
    long_group = "g" * 64
    exc = refused(
        lambda: core.create_namespaced_config_map(
            "default", {"metadata": {"name": "ok", "labels": {"clusterous.io/group": long_group}}}
        )
    )
    assert status_body(exc)["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": f'Invalid value: "{long_group}": must be no more than 63 bytes',
            "field": "metadata.labels",
        }
    ]


def test_deployment_selector_must_match_its_template(admin) -> None:
    apps = kubernetes.client.AppsV1Api(admin)
    body = {
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "other"}},
                "spec": {
                    "nodeSelector": {"clusterous.io/group": "bad group"},
                    "containers": [{"name": "Web"}],
                },
            },
        },
    }
    causes = status_body(refused(lambda: apps.create_namespaced_deployment("default", body)))["details"][
        "causes"
    ]
    assert [c["field"] for c in causes] == [
        "spec.template.spec.nodeSelector",
        "spec.template.spec.containers[0].name",
        "spec.template.metadata.labels",
    ]
    assert causes[2]["message"].endswith("`selector` does not match template `labels`")


# -- custom resources: the structural schema of the ClusterApp CRD --------------------------


def test_wrong_type_is_422_naming_the_field(admin, crd) -> None:
    custom = kubernetes.client.CustomObjectsApi(admin)
    body = clusterapp()
    body["spec"]["components"][0].update(ports=["http"], replicas=[2])
    exc = refused(lambda: custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body))
    assert exc.status == 422
    status = status_body(exc)
    assert status["details"]["kind"] == "ClusterApp" and status["details"]["group"] == GROUP
    fields = {c["field"]: c["message"] for c in status["details"]["causes"]}
    assert fields["spec.components[0].ports[0]"] == (
        'Invalid value: "string": spec.components[0].ports[0] in body must be of type integer: "string"'
    )
    assert fields["spec.components[0].replicas"] == (
        'Invalid value: "array": spec.components[0].replicas in body must be of type integer,string: "array"'
    )
    assert status["message"].startswith('ClusterApp.clusterous.io "demo" is invalid: [spec.components[0]')


def test_enum_required_pattern_and_range(admin, crd) -> None:
    custom = kubernetes.client.CustomObjectsApi(admin)
    body = clusterapp()
    body["spec"]["components"][0].update(name="Master", replicas=-1)
    del body["spec"]["components"][0]["image"]
    causes = status_body(
        refused(lambda: custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body))
    )["details"]["causes"]
    assert {
        "reason": "FieldValueRequired",
        "message": "Required value",
        "field": "spec.components[0].image",
    } in causes
    assert {
        "reason": "FieldValueInvalid",
        "message": 'Invalid value: "Master": spec.components[0].name in body should match '
        "'^[a-z]([-a-z0-9]*[a-z0-9])?$'",
        "field": "spec.components[0].name",
    } in causes
    assert {
        "reason": "FieldValueInvalid",
        "message": "Invalid value: -1: spec.components[0].replicas in body should be greater than or equal to 0",
        "field": "spec.components[0].replicas",
    } in causes
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, clusterapp())
    exc = refused(
        lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, "default", PLURAL, "demo", {"status": {"phase": "Exploded"}}
        )
    )
    assert status_body(exc)["details"]["causes"] == [
        {
            "reason": "FieldValueNotSupported",
            "message": 'Unsupported value: "Exploded": supported values: "Pending", "Deploying", "Running", '
            '"Degraded", "Failed"',
            "field": "status.phase",
        }
    ]


def test_defaults_applied_and_unknown_fields_pruned(k8s_api: K8sApi, admin, crd) -> None:
    custom = kubernetes.client.CustomObjectsApi(admin)
    body = clusterapp(extra="dropped")
    body["spec"]["components"][0]["colour"] = "blue"
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    component = created["spec"]["components"][0]
    assert component == {
        "name": "master",
        "group": "master",
        "image": "basic-python",
        "replicas": 1,
        "hostNetwork": False,
    }
    assert created["spec"]["sharedVolume"] == {"mountPath": "/home/data"}
    assert "extra" not in created["spec"]
    assert k8s_api.get("capp", "demo")["spec"] == created["spec"]  # stored as answered
    # A status write through /status is pruned too; the spec is untouched by it.
    updated = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "demo", {"status": {"phase": "Running", "bogus": 1}}
    )
    assert updated["status"] == {"phase": "Running"}
    # Spec changes go through the main resource, which ignores status.
    patched = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "demo",
        {"spec": {"sharedVolume": {"mountPath": "/data"}}, "status": {}},
    )
    assert patched["spec"]["sharedVolume"] == {"mountPath": "/data"} and patched["status"] == {
        "phase": "Running"
    }
    assert patched["metadata"]["generation"] == 2


def test_cel_rules_of_the_crd(admin, crd) -> None:
    custom = kubernetes.client.CustomObjectsApi(admin)
    body = clusterapp()
    body["spec"]["components"].append(
        {
            "name": "engine",
            "group": "worker",
            "image": "basic-python",
            "replicas": "auto",
            "dependsOn": ["mastr"],
        }
    )
    causes = status_body(
        refused(lambda: custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body))
    )["details"]["causes"]
    assert causes == [
        {
            "reason": "FieldValueInvalid",
            "message": "Invalid value: dependsOn must name components of this application",
            "field": "spec.components",
        },
        {
            "reason": "FieldValueInvalid",
            "message": "Invalid value: replicas: auto needs cpu (a quantity or auto)",
            "field": "spec.components[1]",
        },
    ]
    body["spec"]["components"][1].update(dependsOn=["master"], cpu="1")
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)


def test_transition_rules_see_old_self(k8s_api: K8sApi, admin) -> None:
    crd = copy.deepcopy(CRD)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    schema["x-kubernetes-validations"] = [{"rule": "self.components.size() >= oldSelf.components.size()"}]
    k8s_api.create("apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    custom = kubernetes.client.CustomObjectsApi(admin)
    body = clusterapp()
    body["spec"]["components"].append({"name": "b", "group": "worker", "image": "x"})
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    exc = refused(
        lambda: custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            "default",
            PLURAL,
            "demo",
            {"spec": {"components": body["spec"]["components"][:1]}},
        )
    )
    assert status_body(exc)["details"]["causes"][0]["message"] == (
        "Invalid value: failed rule: self.components.size() >= oldSelf.components.size()"
    )


def test_kubectl_apply_of_an_invalid_clusterapp(k8s_api: K8sApi, kubectl: Kubectl, crd) -> None:
    body = clusterapp()
    body["spec"]["components"][0]["ports"] = [70000]
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert result.returncode == 1
    assert (
        'The ClusterApp "demo" is invalid: spec.components[0].ports[0]: Invalid value: 70000: '
        "spec.components[0].ports[0] in body should be less than or equal to 65535" in result.stderr
    )


# -- RBAC: the operator's ServiceAccount with manifests/operator.yaml applied --------------


@pytest.fixture()
def operator_sa(k8s_api: K8sApi, kubectl: Kubectl, crd) -> Path:
    """manifests/operator.yaml applied as `up` applies it; a kubeconfig acting as its account."""
    for name in ("namespace.yaml", "operator.yaml"):
        kubectl("apply", "-f", "-", input=rendered_manifest(name))
    return service_account_kubeconfig(k8s_api, "clusterous-system", "clusterous-operator")


def test_operator_account_can_do_what_the_operator_does(k8s_api: K8sApi, operator_sa: Path) -> None:
    k8s_api.create("v1/nodes", {"metadata": {"name": "n1"}})
    client = client_for(operator_sa)
    try:
        apps, core = kubernetes.client.AppsV1Api(client), kubernetes.client.CoreV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        deployment = {
            "metadata": {"name": "demo-master"},
            "spec": {
                "selector": {"matchLabels": {"app": "demo"}},
                "template": {
                    "metadata": {"labels": {"app": "demo"}},
                    "spec": {"containers": [{"name": "m"}]},
                },
            },
        }
        apps.create_namespaced_deployment("default", deployment)
        apps.patch_namespaced_deployment("demo-master", "default", {"spec": {"replicas": 2}})
        core.create_namespaced_service("default", {"metadata": {"name": "demo-master"}, "spec": {}})
        core.list_node()
        core.list_pod_for_all_namespaces()
        k8s_api.create("capp", clusterapp())
        custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, "default", PLURAL, "demo", {"status": {"phase": "Running"}}
        )
        apps.delete_namespaced_deployment("demo-master", "default")
    finally:
        client.close()


def test_operator_account_is_refused_outside_its_rules(k8s_api: K8sApi, operator_sa: Path) -> None:
    client = client_for(operator_sa)
    try:
        core = kubernetes.client.CoreV1Api(client)
        exc = refused(lambda: core.list_namespaced_secret("default"))
        assert exc.status == 403
        body = status_body(exc)
        assert body["reason"] == "Forbidden"
        assert body["message"] == (
            f'secrets is forbidden: User "{OPERATOR}" cannot list resource "secrets" in API group "" '
            'in the namespace "default"'
        )
        exc = refused(lambda: core.delete_node("n1"))
        assert status_body(exc)["message"] == (
            f'nodes "n1" is forbidden: User "{OPERATOR}" cannot delete resource "nodes" in API group "" '
            "at the cluster scope"
        )
        apps = kubernetes.client.AppsV1Api(client)
        exc = refused(lambda: apps.list_namespaced_stateful_set("default"))
        assert status_body(exc)["message"].startswith("statefulsets.apps is forbidden:")
        exc = refused(lambda: core.read_namespaced_pod_log("p", "default"))
        assert 'cannot get resource "pods/log" in API group ""' in status_body(exc)["message"]
        custom = kubernetes.client.CustomObjectsApi(client)
        exc = refused(
            lambda: custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, clusterapp())
        )
        assert (
            'cannot create resource "clusterapps" in API group "clusterous.io"' in status_body(exc)["message"]
        )
        # Discovery is open to any authenticated user (system:discovery, system:public-info-viewer).
        token = service_account_token("clusterous-system", "clusterous-operator")
        for path in ("/version", "/api", "/apis", "/api/v1", "/openapi/v3"):
            response = requests.get(
                k8s_api.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            assert response.status_code == 200, path
    finally:
        client.close()


def test_kubectl_as_the_operator_and_role_bindings(
    k8s_api: K8sApi, kubectl: Kubectl, operator_sa: Path
) -> None:
    as_operator = Kubectl(kubectl.binary, k8s_api)
    as_operator.env = {**kubectl.env, "KUBECONFIG": str(operator_sa)}
    as_operator("get", "deployments", "-n", "default")
    result = as_operator("get", "configmaps", "-n", "default", check=False)
    assert result.returncode == 1
    assert (
        f'Error from server (Forbidden): configmaps is forbidden: User "{OPERATOR}" cannot list resource '
        '"configmaps" in API group "" in the namespace "default"' in result.stderr
    )
    # A RoleBinding grants in its own namespace only, and only the named objects.
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "read-info", "namespace": "clusterous-system"},
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["info"]}
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "read-info", "namespace": "clusterous-system"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-info"},
        "subjects": [
            {"kind": "ServiceAccount", "name": "clusterous-operator", "namespace": "clusterous-system"}
        ],
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all([role, binding]))
    for name in ("info", "other"):
        k8s_api.create("v1/configmaps", {"metadata": {"name": name}}, namespace="clusterous-system")
    assert as_operator("get", "configmap", "info", "-n", "clusterous-system").returncode == 0
    assert as_operator("get", "configmap", "other", "-n", "clusterous-system", check=False).returncode == 1
    assert as_operator("get", "configmap", "info", "-n", "default", check=False).returncode == 1


def test_tokens_of_missing_accounts_are_unauthorized(k8s_api: K8sApi) -> None:
    configuration = kubernetes.client.Configuration()
    configuration.host = k8s_api.url
    configuration.api_key = {"authorization": "Bearer " + service_account_token("default", "nobody")}
    with kubernetes.client.ApiClient(configuration) as client:
        exc = refused(lambda: kubernetes.client.CoreV1Api(client).list_namespaced_config_map("default"))
    assert exc.status == 401


def test_the_operator_runs_as_its_service_account(k8s_api: K8sApi, operator_sa: Path, monkeypatch) -> None:
    """kopf and the real handlers with nothing but the rights manifests/operator.yaml grants."""
    from kopf.testing import KopfRunner

    monkeypatch.setenv("KUBECONFIG", str(operator_sa))
    k8s_api.add_node("master-1", labels={"clusterous.io/group": "master"}, cpu="2")
    args = ["run", "--standalone", "--all-namespaces", "-m", "clusterous_operator.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        k8s_api.create("capp", clusterapp())
        k8s_api.wait_for(
            lambda: k8s_api.get("apps/v1/deployments", "demo-master"), timeout=30, what="the Deployment"
        )
        k8s_api.wait_for(lambda: k8s_api.get("v1/services", "demo-master"), timeout=30, what="the Service")
        k8s_api.delete("capp", "demo")
        k8s_api.wait_for(
            lambda: k8s_api.get("capp", "demo") is None, timeout=30, what="the finalizer released"
        )
    assert runner.exception is None, runner.output
    assert "Forbidden" not in runner.output, runner.output


def test_the_clusterapp_crd_refuses_a_name_its_services_could_not_have(
    k8s_api: K8sApi, kubectl: Kubectl
) -> None:
    """The CRD's root CEL rule: `2024-sim` would make a Service `2024-sim-master` (422)."""
    crd = (Path(__file__).resolve().parents[1] / "operator/clusterous_operator/crd.yaml").read_text()
    kubectl("apply", "-f", "-", input=crd)
    app = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "examples/basic-python/clusterapp.yaml").read_text()
    )
    app["metadata"]["name"] = "2024-sim"
    refused = kubectl("apply", "-f", "-", input=yaml.safe_dump(app), check=False)
    assert refused.returncode == 1
    assert "metadata.name must start with a lower case letter" in refused.stderr
    app["metadata"]["name"] = "sim-2024"
    kubectl("apply", "-f", "-", input=yaml.safe_dump(app))
