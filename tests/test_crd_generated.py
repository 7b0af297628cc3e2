"""The CRD and the field tables of docs/clusterapp.md are generated from schema.py: the committed
files are what the generator writes, the schema is structural, and what the operator writes in
`status` is what the models say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clusterous_operator import crdgen
from clusterous_operator.schema import ClusterApp, ConditionType, Phase, Reason, Status
from clusterous_operator.spec import SpecError, parse_app
from clusterous_operator.status import build_status

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = yaml.safe_load((ROOT / "examples/basic-python/clusterapp.yaml").read_text())


def test_the_committed_crd_and_docs_are_the_generated_ones() -> None:
    stale = [str(path.relative_to(ROOT)) for path in crdgen.stale_files()]
    assert not stale, f"{', '.join(stale)}: not what schema.py generates; run `{crdgen.COMMAND}`"


def test_the_check_command_passes_on_the_committed_files() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clusterous_operator.crdgen", "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _walk(node: dict, path: str = "openAPIV3Schema"):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


def test_the_schema_is_structural() -> None:
    """Kubernetes' rules for a CRD schema: every node typed (int-or-string the one exception,
    its anyOf naming only the two types), no references or titles."""
    crd = yaml.safe_load(crdgen.CRD_FILE.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert not {"$ref", "$defs", "title", "oneOf", "allOf", "const", "additionalProperties"} & set(
            node
        ), path
        assert not any(key.startswith("x-docs-") for key in node), path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}] and "type" not in node, path
        else:
            assert "type" in node and "anyOf" not in node, path


def test_the_generator_refuses_what_a_crd_cannot_say() -> None:
    with pytest.raises(ValueError, match=r"int \| str"):
        crdgen.structural({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, {})
    with pytest.raises(ValueError, match="structural"):
        crdgen.structural({"type": "string", "const": "x"}, {})


def test_the_example_fits_the_models_and_the_operator() -> None:
    app = ClusterApp.model_validate_json(json.dumps(EXAMPLE))
    assert app.spec.components[1].replicas == "auto" and app.spec.shared_volume.mount_path == "/home/data"
    parse_app(EXAMPLE)


def test_a_failed_status_is_what_the_models_and_the_crd_say() -> None:
    import jsonschema

    crd = yaml.safe_load(crdgen.CRD_FILE.read_text())
    status_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    status = build_status(
        None, generation=1, now="2026-01-01T00:00:00Z", error=SpecError("spec.components", "a list")
    )
    Status.model_validate_json(json.dumps(status))
    jsonschema.Draft4Validator(status_schema).validate(status)
    assert status["phase"] == Phase.FAILED and type(status["phase"]) is str  # plain, dumps as YAML
    yaml.safe_dump(status)
    assert {c["reason"] for c in status["conditions"]} == {Reason.INVALID_SPEC}


def test_every_reason_belongs_to_a_condition_and_every_value_has_a_meaning() -> None:
    used = {reason for kind in ConditionType for reason in kind.reasons}
    assert used == set(Reason)
    for enum in (Phase, Reason, ConditionType):
        assert all(member.meaning for member in enum), enum
