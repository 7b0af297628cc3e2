"""The ClusterApp CRD and the field tables of docs/clusterapp.md, generated from schema.py.

    python -m clusterous_operator.crdgen          # rewrite crd.yaml, its manifests/ copy and the docs
    python -m clusterous_operator.crdgen --check  # exit 1 naming the files that differ

pydantic's JSON schema is made structural, as Kubernetes requires of a CRD: `$ref`s inlined,
`Optional` unwrapped (a field may be absent; null is never sent), `int | str` as
`x-kubernetes-int-or-string` with the branches' bounds on the field itself, titles dropped.
Any other keyword raises, so nothing Kubernetes would refuse slips through. A default is kept
unless it is None or an empty list (storing `ports: []` in every object says nothing).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from clusterous_core.names import GROUP, PLURAL, VERSION
from clusterous_operator.schema import ClusterApp, ComponentState, ConditionType, Phase, Reason

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = Path(__file__).with_name("crd.yaml")
MANIFEST_COPY = REPO / "manifests" / "crd-clusterapp.yaml"
DOCS_FILE = REPO / "docs" / "clusterapp.md"
COMMAND = "python -m clusterous_operator.crdgen"

_ORDER = (
    "type", "description", "default", "required", "enum", "format",
    "minLength", "maxLength", "pattern", "minimum", "maximum", "minItems", "maxItems",
    "x-kubernetes-int-or-string", "anyOf", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-validations", "x-docs-default", "x-docs-detail", "properties", "items",
)  # fmt: skip
_HEADER = f"""\
# The ClusterApp CustomResourceDefinition, generated from clusterous_operator/schema.py by
# `{COMMAND}`: edit schema.py, not this file (tests/test_crd_generated.py
# compares them).
# docs/clusterapp.md documents every field; manifests/crd-clusterapp.yaml is an identical copy.
"""


def structural(node: dict, defs: dict) -> dict:
    """One node of pydantic's JSON schema as a structural schema (x-docs-default still in)."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref:
        node = {**defs[ref.rsplit("/", 1)[1]], **node}
    options = [o for o in node.pop("anyOf", ()) if o != {"type": "null"}]
    if len(options) == 1:
        node = {**structural(options[0], defs), **node}
    elif options:
        if sorted(o.get("type") for o in options) != ["integer", "string"]:
            raise ValueError(f"only int | str unions can be structural: {options}")
        for option in options:  # type-specific keywords apply only to values of their type
            node.update({k: v for k, v in option.items() if k != "type"})
        node["x-kubernetes-int-or-string"] = True
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    node.pop("title", None)
    for key in ("description", "x-docs-detail"):
        if key in node:
            node[key] = " ".join(node[key].split())
    if "x-kubernetes-validations" in node:  # pydantic sorts keys; a rule reads best first
        node["x-kubernetes-validations"] = [
            {"rule": v["rule"], "message": v["message"]} for v in node["x-kubernetes-validations"]
        ]
    if node.get("additionalProperties") is True:
        del node["additionalProperties"]
    if "default" in node and "x-docs-default" not in node and node["default"] is not None:
        default = node["default"]
        node["x-docs-default"] = f"`{default if isinstance(default, str) else json.dumps(default)}`"
    if node.get("default") in (None, []):
        node.pop("default", None)
    if "properties" in node:
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    if "items" in node:
        items = structural(node["items"], defs)
        if "description" in items:  # a model's docstring introduces its docs table only: the CRD
            items["x-docs-detail"] = items.pop("description")  # must fit in EC2's 16 KiB user-data
        node["items"] = {k: items[k] for k in _ORDER if k in items}
    unknown = set(node) - set(_ORDER)
    if unknown:
        raise ValueError(f"not for a CRD's structural schema: {sorted(unknown)} in {node}")
    return {k: node[k] for k in _ORDER if k in node}


def full_schema() -> dict:
    """ClusterApp's schema with the docs' extras (`x-docs-default`)."""
    raw = ClusterApp.model_json_schema(by_alias=True)
    defs = raw.pop("$defs", {})
    return structural(raw, defs)


def _without_docs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_docs(v) for k, v in node.items() if not k.startswith("x-docs-")}
    if isinstance(node, list):
        return [_without_docs(v) for v in node]
    return node


def crd() -> dict:
    """The CustomResourceDefinition object: names and columns here, the schema from schema.py."""
    phases = [p.value for p in Phase]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "clusterous-k8s"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": "ClusterApp",
                "listKind": "ClusterAppList",
                "plural": PLURAL,
                "singular": "clusterapp",
                "shortNames": ["capp"],
                "categories": ["clusterous"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": "Phase",
                            "type": "string",
                            "description": f"{', '.join(phases[:-1])} or {phases[-1]}.",
                            "jsonPath": ".status.phase",
                        },
                        {
                            "name": "Ready",
                            "type": "string",
                            "description": "Ready replicas / desired replicas, all components together.",
                            "jsonPath": ".status.ready",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {
                            "name": "Message",
                            "type": "string",
                            "priority": 1,
                            "description": "What the application is doing or waiting for.",
                            "jsonPath": ".status.message",
                        },
                    ],
                    "schema": {"openAPIV3Schema": _without_docs(full_schema())},
                }
            ],
        },
    }


def crd_text() -> str:
    return _HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)


# ---- docs/clusterapp.md: the tables between `<!-- generated: NAME -->` and `<!-- end: NAME -->`


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _bounds(node: dict, low: str, high: str, unit: str = "") -> str:
    lo, hi = node.get(low), node.get(high)
    if lo is not None and hi is not None:
        return f"{lo}–{hi}{unit}"
    if lo is not None:
        return f"≥ {lo}{unit}"
    return f"≤ {hi}{unit}" if hi is not None else ""


def type_text(node: dict) -> str:
    """What a value must be, in words, from the schema's keywords."""
    if node.get("x-kubernetes-int-or-string"):
        number = " ".join(filter(None, ["integer", _bounds(node, "minimum", "maximum")]))
        return f"{number}, or string `{node['pattern']}`"
    kind = node["type"]
    if kind == "string":
        kind = f"string ({node['format']})" if "format" in node else "string"
        parts = [kind, _bounds(node, "minLength", "maxLength", " characters")]
        if "pattern" in node:
            parts.append(f"`{node['pattern']}`")
        if "enum" in node:
            parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
        return ", ".join(filter(None, parts))
    if kind == "integer":
        return " ".join(filter(None, ["integer", _bounds(node, "minimum", "maximum")]))
    if kind == "array":
        items = node["items"]
        item = {"object": "objects", "string": "strings", "integer": "integers"}.get(
            items["type"], items["type"]
        )
        detail = type_text(items).removeprefix(items["type"]).lstrip(", ")
        if items["type"] != "object" and detail:
            item += f" {detail}"
        parts = [f"list of {item}", _bounds(node, "minItems", "maxItems", " items")]
        if node.get("x-kubernetes-list-type") == "set":
            parts.append("each once")
        if node.get("x-kubernetes-list-type") == "map":
            parts.append("keyed by " + ", ".join(f"`{k}`" for k in node["x-kubernetes-list-map-keys"]))
        return ", ".join(filter(None, parts))
    return kind


def field_tables(node: dict, path: str, level: int = 3) -> list[str]:
    """A table of `node`'s fields, then one per nested object (`path.field` or `path.field[]`)."""
    required = set(node.get("required", ()))
    lines = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    nested = []
    for name, child in node["properties"].items():
        kind = type_text(child) + (", required" if name in required else "")
        default = child.get("x-docs-default", "")
        meaning = " ".join(filter(None, [child.get("description"), child.get("x-docs-detail")]))
        lines.append(f"| `{name}` | {_cell(kind)} | {_cell(default)} | {_cell(meaning)} |")
        if child.get("type") == "object" and "properties" in child:
            nested.append((f"{path}.{name}", child))
        elif child.get("type") == "array" and "properties" in child["items"]:
            nested.append((f"{path}.{name}[]", child["items"]))
    for sub_path, sub in nested:
        lines += ["", f"{'#' * level} {sub_path}", ""]
        intro = sub.get("description") or sub.get("x-docs-detail")
        if intro:
            lines += [intro, ""]
        lines += field_tables(sub, sub_path, level)
    return lines


def enum_tables() -> list[str]:
    """Phases, component states, conditions and reasons with their meanings."""
    lines = ["### Phases", "", "| phase | meaning |", "| --- | --- |"]
    lines += [f"| `{p.value}` | {_cell(p.meaning)} |" for p in Phase]
    lines += ["", "### Component states", "", "| state | meaning |", "| --- | --- |"]
    lines += [f"| `{s.value}` | {_cell(s.meaning)} |" for s in ComponentState]
    lines += ["", "### Conditions", "", "| type | meaning | reasons |", "| --- | --- | --- |"]
    for kind in ConditionType:
        reasons = ", ".join(f"`{r.value}`" for r in kind.reasons)
        lines.append(f"| `{kind.value}` | {_cell(kind.meaning)} | {reasons} |")
    lines += ["", "### Reasons", "", "| reason | meaning |", "| --- | --- |"]
    lines += [f"| `{r.value}` | {_cell(r.meaning)} |" for r in Reason]
    return lines


def docs_blocks() -> dict[str, str]:
    schema = full_schema()["properties"]
    status = field_tables(schema["status"], "status") + [""] + enum_tables()
    return {"spec": "\n".join(field_tables(schema["spec"], "spec")), "status": "\n".join(status)}


def docs_text(current: str) -> str:
    """docs/clusterapp.md with its generated blocks replaced; the prose around them is kept."""
    for name, body in docs_blocks().items():
        begin, end = f"<!-- generated: {name} ({COMMAND}) -->", f"<!-- end: {name} -->"
        found = re.search(re.escape(begin) + r".*?" + re.escape(end), current, re.S)
        if not found:
            raise ValueError(f"{DOCS_FILE}: no `{begin}` … `{end}` block")
        current = f"{current[: found.start()]}{begin}\n{body}\n{end}{current[found.end() :]}"
    return current


def expected_files() -> dict[Path, str]:
    """Every generated file and the text it should have."""
    text = crd_text()
    return {CRD_FILE: text, MANIFEST_COPY: text, DOCS_FILE: docs_text(DOCS_FILE.read_text())}


def stale_files() -> list[Path]:
    return [path for path, text in expected_files().items() if path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--check"]:
        stale = stale_files()
        for path in stale:
            print(f"{path.relative_to(REPO)} differs from schema.py: run `{COMMAND}`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in expected_files().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
