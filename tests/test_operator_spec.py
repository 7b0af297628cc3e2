"""ClusterApp input: the CRD schema and the operator's own checks reject the same bad input,
and the checks the schema cannot express name the field."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from clusterous_operator.spec import SpecError, check_groups, cpu_millicores, dependency_order, parse_app

ROOT = Path(__file__).resolve().parents[1]
CRD_PATH = ROOT / "operator/clusterous_operator/crd.yaml"
CRD = yaml.safe_load(CRD_PATH.read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
EXAMPLE = yaml.safe_load((ROOT / "examples/basic-python/clusterapp.yaml").read_text())


def schema_errors(body: dict) -> list[str]:
    validator = jsonschema.Draft4Validator(SCHEMA)
    return [e.message for e in validator.iter_errors(body)]


def edited(path: str, value) -> dict:
    """The example with one value replaced (path like 'spec.components.1.cpu'); a value of
    DELETE removes the key."""
    body = copy.deepcopy(EXAMPLE)
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    key = int(last) if isinstance(target, list) else last
    if value is DELETE:
        del target[key]
    else:
        target[key] = value
    return body


class _Delete:
    """Marks a field to remove; a stable repr keeps test ids equal on every xdist worker."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()


def test_the_manifests_copy_of_the_crd_is_identical() -> None:
    assert (ROOT / "manifests/crd-clusterapp.yaml").read_text() == CRD_PATH.read_text()


def test_the_crd_names_scope_status_and_columns() -> None:
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == "clusterapps.clusterous.io"
    assert (spec["group"], spec["scope"]) == ("clusterous.io", "Namespaced")
    assert spec["names"]["kind"] == "ClusterApp" and spec["names"]["plural"] == "clusterapps"
    assert "capp" in spec["names"]["shortNames"]
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Ready"] == ".status.ready"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_the_crd_is_a_valid_kubernetes_object() -> None:
    import kubernetes_validate

    kubernetes_validate.validate(CRD, "1.31", strict=True)


def test_the_example_is_valid_for_the_schema_and_the_operator() -> None:
    assert schema_errors(EXAMPLE) == []
    app = parse_app(EXAMPLE)
    assert app.name == "basic-python" and app.namespace == "default"
    master, engine = app.spec.components
    assert (master.replicas, master.cpu_m, master.ports) == (1, 500, (8888,))
    assert (engine.replicas, engine.depends_on) == ("auto", ("master",))
    assert app.spec.tunnels[0].component == "master"
    assert dependency_order(app.spec) == ("master", "engine")


# (edit path, value, the field SpecError names, whether the schema alone can reject it)
BAD = [
    ("spec.components.0.ports", [0], "spec.components[0].ports[0]", True),
    ("spec.components.0.ports", [65536], "spec.components[0].ports[0]", True),
    ("spec.components.0.ports", ["http"], "spec.components[0].ports[0]", True),
    ("spec.components.1.replicas", -1, "spec.components[1].replicas", True),
    ("spec.components.1.replicas", "many", "spec.components[1].replicas", True),
    ("spec.components.1.cpu", "lots", "spec.components[1].cpu", True),
    ("spec.components.1.cpu", 0.5, "spec.components[1].cpu", True),  # unquoted fraction
    ("spec.components.1.cpu", "0", "spec.components[1].cpu", False),
    ("spec.components.1.cpu", DELETE, "spec.components[1].cpu", False),  # auto without cpu (CEL rule)
    ("spec.components.1.name", "Engine", "spec.components[1].name", True),
    ("spec.components.1.image", DELETE, "spec.components[1].image", True),
    ("spec.components.1.hostNetwork", "yes", "spec.components[1].hostNetwork", True),
    ("spec.components.1.dependsOn", ["mastr"], "spec.components[1].dependsOn[0]", False),
    ("spec.components.1.dependsOn", ["engine"], "spec.components[1].dependsOn[0]", False),
    ("spec.components", [], "spec.components", True),
    ("spec.sharedVolume.mountPath", "data", "spec.sharedVolume.mountPath", True),
    ("spec.tunnels.0.port", 70000, "spec.tunnels[0].port", True),
    ("spec.tunnels.0.component", "nobody", "spec.tunnels[0].component", False),
    ("spec.tunnels.0.port", 9999, "spec.tunnels[0].port", False),  # master exposes 8888 only
    ("metadata.name", "x" * 60, "metadata.name", False),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "schema_says"), BAD, ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD]
)
def test_bad_input_is_a_spec_error_naming_the_field(path, value, field, schema_says) -> None:
    body = edited(path, value)
    with pytest.raises(SpecError) as caught:
        parse_app(body)
    assert caught.value.field == field
    assert field in str(caught.value) and "expected" in str(caught.value)
    if schema_says:
        assert schema_errors(body), f"the CRD schema should reject {path}={value!r}"


def test_a_dependency_cycle_is_named() -> None:
    body = copy.deepcopy(EXAMPLE)
    body["spec"]["components"][0]["dependsOn"] = ["engine"]
    assert schema_errors(body) == []  # a schema cannot see cycles
    with pytest.raises(SpecError) as caught:
        parse_app(body)
    assert caught.value.field == "spec.components[0].dependsOn"
    assert "master -> engine -> master" in caught.value.expected


def test_an_app_name_a_service_name_cannot_begin_with_is_rejected() -> None:
    """<app>-<component> names Services, which must be DNS-1035 labels (a letter first)."""
    body = copy.deepcopy(EXAMPLE)
    body["metadata"]["name"] = "2024-sim"
    with pytest.raises(SpecError) as caught:
        parse_app(body)
    assert caught.value.field == "metadata.name" and "letter first" in caught.value.expected


def test_duplicate_component_names_are_rejected() -> None:
    body = copy.deepcopy(EXAMPLE)
    body["spec"]["components"][1]["name"] = "master"
    with pytest.raises(SpecError, match=r"spec.components\[1\].name"):
        parse_app(body)


def test_an_unknown_group_names_the_groups_the_nodes_have() -> None:
    app = parse_app(edited("spec.components.1.group", "wrker"))
    with pytest.raises(SpecError) as caught:
        check_groups(app.spec, {"master", "worker"})
    assert caught.value.field == "spec.components[1].group"
    assert "master, worker" in caught.value.expected and caught.value.got == "wrker"
    check_groups(app.spec, set())  # no labelled node yet: nothing to check against


@pytest.mark.parametrize(
    ("quantity", "millicores"),
    [("2", 2000), (3, 3000), ("0.5", 500), (".25", 250), ("1930m", 1930), ("1.125", 1125)],
)
def test_cpu_quantities(quantity, millicores) -> None:
    assert cpu_millicores(quantity) == millicores


@pytest.mark.parametrize("value", [1, 12, "auto"])
def test_schema_accepts_integer_or_auto_replicas(value) -> None:
    assert schema_errors(edited("spec.components.1.replicas", value)) == []


@pytest.mark.parametrize("value", ["500m", "2", 2, "auto", "0.125"])
def test_schema_accepts_cpu_quantities_or_auto(value) -> None:
    assert schema_errors(edited("spec.components.1.cpu", value)) == []
    parse_app(edited("spec.components.1.cpu", value))


def test_schema_rejects_a_phase_outside_the_machine() -> None:
    assert schema_errors({**EXAMPLE, "status": {"phase": "Running"}}) == []
    assert schema_errors({**EXAMPLE, "status": {"phase": "Done"}})
