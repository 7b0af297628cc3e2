"""What kube-apiserver checks before it stores an object, and who may ask.

The emulator (tests/harness/k8s.py) calls `admit` on every create and update and `authorize`
on every request; both raise the `api_error` a real API server would answer with.

`admit` (422 Invalid, with `details.causes` as the API server sends them):
- object names per kind: DNS-1123 subdomain for most kinds, DNS-1123 label for Namespaces,
  DNS-1035 label for Services, path segments for RBAC objects, `<plural>.<group>` for CRDs;
  label keys and values (metadata, selectors, pod templates, nodeSelector), annotation keys,
  a Deployment's selector against its template, container names;
- custom resources against the stored CRD's structural schema: unknown fields pruned (except
  under `x-kubernetes-preserve-unknown-fields`), `default`s applied, then type, enum, required,
  pattern, length, range, item count and list-type checks, and the `x-kubernetes-validations`
  CEL rules (through cel-python, `celpy`) with `self` and, on updates, `oldSelf`.

`authorize` (401 Unauthorized, 403 Forbidden): bearer tokens. The emulator's admin token may do
anything; a ServiceAccount token (`service_account_token`) acts as
`system:serviceaccount:NS:NAME` and is authorized by RBAC against the Roles, ClusterRoles,
RoleBindings and ClusterRoleBindings stored in the emulator, as kube-apiserver's RBAC
authorizer does. Messages follow Kubernetes' source (see docs/testing.md).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kmock
import yaml

if TYPE_CHECKING:
    from kmock._internal import rendering

    from tests.harness.k8s import ApiEmulator, K8sApi

ADMIN_TOKEN = "kmock-test-token"
SA_TOKEN_PREFIX = "kmock-serviceaccount:"
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
SERVICE_ACCOUNTS = kmock.resource("", "v1", "serviceaccounts")
RBAC = "rbac.authorization.k8s.io"

# ---------------------------------------------------------------------------------------------
# Field errors: k8s.io/apimachinery/pkg/util/validation/field, rendered as the API server does.
# ---------------------------------------------------------------------------------------------

_OMIT = object()  # field.OmitValueType: the message shows no value
_TYPE_WORDS = {
    "FieldValueRequired": "Required value",
    "FieldValueInvalid": "Invalid value",
    "FieldValueTypeInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
}


def go_value(value: Any) -> str:
    """A bad value as Go's fmt prints it in field errors (%q strings, %v numbers, %#v maps)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if value is None:
        return "null"
    if isinstance(value, dict):
        kind = "string" if all(isinstance(v, str) for v in value.values()) else "interface {}"
        items = ", ".join(f"{json.dumps(k)}:{go_value(v)}" for k, v in sorted(value.items()))
        return f"map[string]{kind}{{{items}}}"
    return json.dumps(value)


class FieldError:
    """One field.Error: its type (the cause's reason), field path, bad value and detail."""

    def __init__(self, reason: str, field: str, value: Any = _OMIT, detail: str = "") -> None:
        self.reason, self.field, self.value, self.detail = reason, field, value, detail

    def body(self) -> str:
        text = _TYPE_WORDS[self.reason]
        if self.reason not in ("FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong") and (
            self.value is not _OMIT
        ):
            text += f": {go_value(self.value)}"
        return text + (f": {self.detail}" if self.detail else "")

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def invalid_object(group: str, kind: str, name: str, errors: list[FieldError]) -> kmock.KubernetesError:
    """apierrors.NewInvalid: `Kind.group "name" is invalid: ...`, one cause per field error."""
    from tests.harness.k8s import api_error

    unique: list[FieldError] = []
    for error in errors:
        if str(error) not in {str(e) for e in unique}:
            unique.append(error)
    text = str(unique[0]) if len(unique) == 1 else "[" + ", ".join(str(e) for e in unique) + "]"
    qualified = f"{kind}.{group}" if group else kind
    causes = [{"reason": e.reason, "message": e.body(), "field": e.field} for e in errors]
    return api_error(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {text}',
        name=name,
        group=group,
        kind=kind,
        causes=causes,
    )


# ---------------------------------------------------------------------------------------------
# Names, labels and annotations: k8s.io/apimachinery/pkg/api/validate/content and
# k8s.io/apimachinery/pkg/util/validation.
# ---------------------------------------------------------------------------------------------

DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + r"(\." + DNS1123_LABEL_FMT + ")*"
DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
LABEL_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE_FMT = "(" + LABEL_KEY_FMT + ")?"


def regex_error(message: str, fmt: str, *examples: str) -> str:
    """content.RegexError, double space after each example's comma included."""
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def _full(fmt: str, value: str) -> bool:
    return re.fullmatch(fmt, value) is not None


def max_len_error(length: int) -> str:
    return f"must be no more than {length} bytes"


def dns1123_label(value: str) -> list[str]:
    errors = [max_len_error(63)] if len(value) > 63 else []
    if not _full(DNS1123_LABEL_FMT, value):
        if _full(DNS1123_SUBDOMAIN_FMT, value):
            errors.append("must not contain dots")
        else:
            errors.append(
                regex_error(
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                    "and must start and end with an alphanumeric character",
                    DNS1123_LABEL_FMT,
                    "my-name",
                    "123-abc",
                )
            )
    return errors


def dns1123_subdomain(value: str) -> list[str]:
    errors = [max_len_error(253)] if len(value) > 253 else []
    if not _full(DNS1123_SUBDOMAIN_FMT, value):
        errors.append(
            regex_error(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                "and must start and end with an alphanumeric character",
                DNS1123_SUBDOMAIN_FMT,
                "example.com",
            )
        )
    return errors


def dns1035_label(value: str) -> list[str]:
    errors = ["must be no more than 63 characters"] if len(value) > 63 else []
    if not _full(DNS1035_LABEL_FMT, value):
        errors.append(
            regex_error(
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                "alphabetic character, and end with an alphanumeric character",
                DNS1035_LABEL_FMT,
                "my-name",
                "abc-123",
            )
        )
    return errors


def path_segment_name(value: str) -> list[str]:
    """path.IsValidPathSegmentName (RBAC object names)."""
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{c}'" for c in ("/", "%") if c in value]


QUALIFIED_NAME_ERROR = regex_error(
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
    LABEL_KEY_FMT,
    "MyName",
    "my.name",
    "123-abc",
)


def label_key(value: str) -> list[str]:
    """content.IsLabelKey (a "qualified name")."""
    parts = value.split("/")
    errors: list[str] = []
    if len(parts) > 2:
        return [
            "a valid label key "
            + QUALIFIED_NAME_ERROR
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    name = parts[-1]
    if len(parts) == 2:
        if not parts[0]:
            errors.append("prefix part must be non-empty")
        else:
            errors += ["prefix part " + m for m in dns1123_subdomain(parts[0])]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part " + max_len_error(63))
    if not _full(LABEL_KEY_FMT, name):
        errors.append("name part " + QUALIFIED_NAME_ERROR)
    return errors


def label_value(value: str) -> list[str]:
    """content.IsLabelValue."""
    errors = [max_len_error(63)] if len(value) > 63 else []
    if not _full(LABEL_VALUE_FMT, value):
        errors.append(
            regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character",
                LABEL_VALUE_FMT,
                "MyValue",
                "my_value",
                "12345",
            )
        )
    return errors


def validate_labels(labels: Any, field: str) -> list[FieldError]:
    """metav1validation.ValidateLabels: every error is reported on the map's own path."""
    if not isinstance(labels, dict):
        return []
    errors = []
    for key, value in labels.items():
        errors += [FieldError("FieldValueInvalid", field, key, m) for m in label_key(str(key))]
        if not isinstance(value, str):
            errors.append(FieldError("FieldValueTypeInvalid", f"{field}.{key}", value, "must be a string"))
            continue
        errors += [FieldError("FieldValueInvalid", field, value, m) for m in label_value(value)]
    return errors


def name_rule(resource: kmock.resource) -> Any:
    """The name validation of a kind, as its registry strategy chooses it."""
    if resource.group == "" and resource.plural in ("namespaces",):
        return dns1123_label
    if resource.group == "" and resource.plural == "services":
        return dns1035_label  # RelaxedServiceNameValidation is alpha and off by default
    if resource.group == RBAC:
        return path_segment_name
    return dns1123_subdomain


def validate_metadata(resource: kmock.resource, obj: dict, old: dict | None) -> list[FieldError]:
    meta = obj.get("metadata") or {}
    errors: list[FieldError] = []
    if old is None:  # names are immutable: validated on create only
        name = meta.get("name") or ""
        errors += [
            FieldError("FieldValueInvalid", "metadata.name", name, m) for m in name_rule(resource)(name)
        ]
        if resource == CRDS:
            spec = obj.get("spec") or {}
            wanted = f"{(spec.get('names') or {}).get('plural')}.{spec.get('group')}"
            if name != wanted:
                errors.append(
                    FieldError(
                        "FieldValueInvalid", "metadata.name", name, 'must be spec.names.plural+"."+spec.group'
                    )
                )
    errors += validate_labels(meta.get("labels"), "metadata.labels")
    annotations = meta.get("annotations") or {}
    if isinstance(annotations, dict):
        for key in annotations:
            errors += [
                FieldError("FieldValueInvalid", "metadata.annotations", key, m)
                for m in label_key(str(key).lower())
            ]
        size = sum(len(str(k)) + len(str(v)) for k, v in annotations.items())
        if size > 256 * 1024:
            errors.append(
                FieldError(
                    "FieldValueTooLong",
                    "metadata.annotations",
                    detail=f"must have at most {256 * 1024} bytes",
                )
            )
    for i, finalizer in enumerate(meta.get("finalizers") or []):
        errors += [
            FieldError("FieldValueInvalid", f"metadata.finalizers[{i}]", finalizer, m)
            for m in label_key(str(finalizer))
        ]
    return errors


def validate_pod_spec(spec: Any, path: str) -> list[FieldError]:
    if not isinstance(spec, dict):
        return []
    errors = validate_labels(spec.get("nodeSelector"), f"{path}.nodeSelector")
    for list_name in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(list_name) or []):
            if not isinstance(container, dict):
                continue
            here = f"{path}.{list_name}[{i}]"
            name = container.get("name") or ""
            if not name:
                errors.append(FieldError("FieldValueRequired", f"{here}.name"))
            else:
                errors += [
                    FieldError("FieldValueInvalid", f"{here}.name", name, m) for m in dns1123_label(name)
                ]
            for j, port in enumerate(container.get("ports") or []):
                number = (port or {}).get("containerPort")
                if isinstance(number, int) and not 1 <= number <= 65535:
                    errors.append(
                        FieldError(
                            "FieldValueInvalid",
                            f"{here}.ports[{j}].containerPort",
                            number,
                            "must be between 1 and 65535, inclusive",
                        )
                    )
    return errors


WORKLOADS = {
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
}


def validate_builtin(resource: kmock.resource, obj: dict) -> list[FieldError]:
    """The spec checks of built-in kinds that names and labels from user input reach."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    key = (resource.group, resource.plural)
    errors: list[FieldError] = []
    if key == ("", "pods"):
        errors += validate_pod_spec(spec, "spec")
    elif key == ("", "services"):
        errors += validate_labels(spec.get("selector"), "spec.selector")
        ports = spec.get("ports") or []
        for i, port in enumerate(ports):
            name = (port or {}).get("name")
            if len(ports) > 1 and not name:
                errors.append(FieldError("FieldValueRequired", f"spec.ports[{i}].name"))
            elif name:
                errors += [
                    FieldError("FieldValueInvalid", f"spec.ports[{i}].name", name, m)
                    for m in dns1123_label(name)
                ]
    elif key in WORKLOADS or key == ("batch", "jobs"):
        selector = spec.get("selector")
        template = spec.get("template") or {}
        template_labels = (template.get("metadata") or {}).get("labels") or {}
        errors += validate_labels(template_labels, "spec.template.metadata.labels")
        errors += validate_pod_spec(template.get("spec"), "spec.template.spec")
        if key in WORKLOADS:
            if not isinstance(selector, dict):
                errors.append(FieldError("FieldValueRequired", "spec.selector"))
            else:
                match = selector.get("matchLabels") or {}
                errors += validate_labels(match, "spec.selector.matchLabels")
                if not selector.get("matchLabels") and not selector.get("matchExpressions"):
                    errors.append(
                        FieldError(
                            "FieldValueInvalid",
                            "spec.selector",
                            selector,
                            "empty selector is invalid for deployment",
                        )
                    )
                elif any(template_labels.get(k) != v for k, v in match.items()):
                    errors.append(
                        FieldError(
                            "FieldValueInvalid",
                            "spec.template.metadata.labels",
                            template_labels,
                            "`selector` does not match template `labels`",
                        )
                    )
    return errors


# ---------------------------------------------------------------------------------------------
# CRD structural schemas: pruning, defaulting, validation (k8s.io/apiextensions-apiserver and
# k8s.io/kube-openapi/pkg/validation).
# ---------------------------------------------------------------------------------------------


def stored_crd(emulator: ApiEmulator, resource: kmock.resource) -> tuple[dict, dict] | None:
    """The stored CRD serving `resource` and its version entry, if it is a custom resource."""
    for crd in emulator._live(CRDS, None):
        spec = crd.get("spec") or {}
        if spec.get("group") != resource.group or (spec.get("names") or {}).get("plural") != resource.plural:
            continue
        for version in spec.get("versions") or []:
            if version.get("name") == resource.version:
                return crd, version
    return None


def crd_schema(version: dict) -> dict | None:
    return ((version.get("schema") or {}).get("openAPIV3Schema")) or None


def _preserves(schema: dict) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def prune(value: Any, schema: dict | None, root: bool = False) -> Any:
    """Drop fields the schema does not specify (structural pruning)."""
    if schema is None or not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        keep_meta = root or schema.get("x-kubernetes-embedded-resource")
        result = {}
        for key, item in value.items():
            if keep_meta and key in ("apiVersion", "kind", "metadata"):
                result[key] = item
            elif key in properties:
                result[key] = prune(item, properties[key])
            elif isinstance(additional, dict):
                result[key] = prune(item, additional)
            elif additional is True or _preserves(schema):
                result[key] = item
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"]) for item in value]
    return value


def default(value: Any, schema: dict | None) -> Any:
    """Apply `default`s top-down; a null for a non-nullable field is dropped first."""
    if schema is None or not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key, prop in properties.items():
            if key in value and value[key] is None and not prop.get("nullable"):
                del value[key]
            if key not in value and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
        for key, item in value.items():
            if key in properties:
                value[key] = default(item, properties[key])
            elif isinstance(schema.get("additionalProperties"), dict):
                value[key] = default(item, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [default(item, schema["items"]) for item in value]
    return value


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _types(schema: dict) -> list[str]:
    if schema.get("x-kubernetes-int-or-string"):
        return ["integer", "string"]
    return [schema["type"]] if schema.get("type") else []


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def validate_schema(value: Any, schema: dict, path: str) -> list[FieldError]:
    """kube-openapi's SchemaValidator, its errors converted as kubeOpenAPIResultToFieldErrors does."""
    errors: list[FieldError] = []
    types = _types(schema)
    actual = json_type(value)
    if value is None:
        if types and not schema.get("nullable"):
            detail = f'{path} in body must be of type {",".join(types)}: "null"'
            return [FieldError("FieldValueTypeInvalid", path, "null", detail)]
        return []
    fits = (
        not types
        or actual in types
        or (actual == "integer" and "number" in types)
        or (actual == "number" and "integer" in types and float(value).is_integer())
    )
    if not fits:
        detail = f'{path} in body must be of type {",".join(types)}: "{actual}"'
        return [FieldError("FieldValueTypeInvalid", path, actual, detail)]
    if "enum" in schema and value not in schema["enum"]:
        allowed = [v if isinstance(v, str) else json.dumps(v) for v in schema["enum"]]
        detail = "supported values: " + ", ".join(json.dumps(v) for v in allowed)
        errors.append(FieldError("FieldValueNotSupported", path, value, detail))
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            detail = f"may not be more than {schema['maxLength']} bytes"
            errors.append(FieldError("FieldValueTooLong", path, value, detail))
        if "minLength" in schema and len(value) < schema["minLength"]:
            detail = f"{path} in body should be at least {schema['minLength']} chars long"
            errors.append(FieldError("FieldValueInvalid", path, value, detail))
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            detail = f"{path} in body should match '{schema['pattern']}'"
            errors.append(FieldError("FieldValueInvalid", path, value, detail))
    if actual in ("integer", "number"):
        for key, bad, words, exclusive in (
            ("minimum", lambda v, m: v < m, "greater than or equal to", "exclusiveMinimum"),
            ("maximum", lambda v, m: v > m, "less than or equal to", "exclusiveMaximum"),
        ):
            if key not in schema:
                continue
            limit = schema[key]
            if schema.get(exclusive):
                hit = value <= limit if key == "minimum" else value >= limit
                words = words.replace(" or equal to", "")
            else:
                hit = bad(value, limit)
            if hit:
                detail = f"{path} in body should be {words} {_number(limit)}"
                errors.append(FieldError("FieldValueInvalid", path, value, detail))
        if "multipleOf" in schema and not math.isclose(
            value / schema["multipleOf"], round(value / schema["multipleOf"])
        ):
            detail = f"{path} in body should be a multiple of {_number(schema['multipleOf'])}"
            errors.append(FieldError("FieldValueInvalid", path, value, detail))
    if isinstance(value, list):
        errors += _validate_array(value, schema, path)
    if isinstance(value, dict):
        errors += _validate_object(value, schema, path)
    for sub in schema.get("allOf") or []:
        errors += validate_schema(value, sub, path)
    if schema.get("anyOf") and not schema.get("x-kubernetes-int-or-string"):
        results = [validate_schema(value, sub, path) for sub in schema["anyOf"]]
        if all(results):
            errors.append(
                FieldError("FieldValueInvalid", path, "", f"{path} must validate at least one schema (anyOf)")
            )
            errors += results[0]
    if schema.get("oneOf"):
        passing = sum(1 for sub in schema["oneOf"] if not validate_schema(value, sub, path))
        if passing != 1:
            errors.append(
                FieldError(
                    "FieldValueInvalid", path, "", f"{path} must validate one and only one schema (oneOf)"
                )
            )
    if isinstance(schema.get("not"), dict) and not validate_schema(value, schema["not"], path):
        errors.append(FieldError("FieldValueInvalid", path, "", f"{path} must not validate the schema (not)"))
    return errors


def _validate_array(value: list, schema: dict, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            errors += validate_schema(item, items, f"{path}[{i}]")
    if "minItems" in schema and len(value) < schema["minItems"]:
        detail = f"{path} in body should have at least {schema['minItems']} items"
        errors.append(FieldError("FieldValueInvalid", path, len(value), detail))
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(
            FieldError("FieldValueTooMany", path, len(value), f"must have at most {schema['maxItems']} items")
        )
    if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
        errors.append(
            FieldError("FieldValueInvalid", path, "", f"{path} in body shouldn't contain duplicates")
        )
    list_type = schema.get("x-kubernetes-list-type")
    seen: set[str] = set()
    for i, item in enumerate(value):
        if list_type == "set":
            key, shown = json.dumps(item, sort_keys=True), item
        elif list_type == "map" and isinstance(item, dict):
            shown = {k: item.get(k) for k in schema.get("x-kubernetes-list-map-keys") or [] if k in item}
            key = json.dumps(shown, sort_keys=True)
        else:
            continue
        if key in seen:
            errors.append(FieldError("FieldValueDuplicate", f"{path}[{i}]", shown))
        seen.add(key)
    return errors


def _validate_object(value: dict, schema: dict, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    prefix = f"{path}." if path else ""
    for key in schema.get("required") or []:
        if key not in value:
            errors.append(FieldError("FieldValueRequired", prefix + key))
    properties = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    for key, item in value.items():
        if not path and key in ("apiVersion", "kind", "metadata") and key not in properties:
            continue
        if key in properties:
            errors += validate_schema(item, properties[key], prefix + key)
        elif isinstance(additional, dict):
            errors += validate_schema(item, additional, prefix + key)
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(
            FieldError(
                "FieldValueTooMany", path, len(value), f"must have at most {schema['maxProperties']} items"
            )
        )
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        detail = f"{path} in body should have at least {schema['minProperties']} properties"
        errors.append(FieldError("FieldValueInvalid", path, len(value), detail))
    return errors


# -- CEL (x-kubernetes-validations) --------------------------------------------------------


@functools.cache
def _cel_environment() -> Any:
    import celpy  # cel-python; in the test extra

    return celpy.Environment()


@functools.cache
def _cel_program(expression: str) -> Any:
    environment = _cel_environment()
    return environment.program(environment.compile(expression))


def _cel_eval(expression: str, self_value: Any, old_value: Any = _OMIT) -> Any:
    import celpy

    activation = {"self": celpy.json_to_cel(self_value)}
    if old_value is not _OMIT:
        activation["oldSelf"] = celpy.json_to_cel(old_value)
    return _cel_program(expression).evaluate(activation)


def _uses_old_self(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


def validate_cel(value: Any, old: Any, schema: dict, path: str) -> list[FieldError]:
    """Evaluate the rules of every node that has a value, as apiextensions' CEL validator does."""
    if value is None or not isinstance(schema, dict):
        return []
    errors: list[FieldError] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        errors += _run_rule(rule, value, old, schema, path)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        prefix = f"{path}." if path else ""
        for key, item in value.items():
            sub = properties.get(key) or (additional if isinstance(additional, dict) else None)
            if sub is not None:
                old_item = old.get(key, _OMIT) if isinstance(old, dict) else _OMIT
                errors += validate_cel(item, old_item, sub, prefix + key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        old_items: dict[str, Any] = {}
        if schema.get("x-kubernetes-list-type") == "map" and isinstance(old, list):
            old_items = {json.dumps([o.get(k) for k in keys]): o for o in old if isinstance(o, dict)}
        for i, item in enumerate(value):
            old_item = (
                old_items.get(json.dumps([item.get(k) for k in keys]), _OMIT)
                if isinstance(item, dict)
                else _OMIT
            )
            errors += validate_cel(item, old_item, schema["items"], f"{path}[{i}]")
    return errors


def _run_rule(rule: dict, value: Any, old: Any, schema: dict, path: str) -> list[FieldError]:
    import celpy

    expression = rule.get("rule") or ""
    message = (rule.get("message") or "").strip()
    shown = message or expression.strip()
    kind = schema.get("type") or "object"
    if _uses_old_self(expression) and old is _OMIT and not rule.get("optionalOldSelf"):
        return []  # transition rules run only when there is a comparable old value
    try:
        result = _cel_eval(expression, value, old if old is not _OMIT else None)
    except celpy.CELParseError as exc:
        return [FieldError("FieldValueInvalid", path, kind, f"rule compile error: {exc}")]
    except celpy.CELEvalError as exc:
        text = str(exc.args[0] if exc.args else exc)
        if text.startswith("no such overload"):
            detail = (
                f"'{text}': call arguments did not match a supported operator, function or macro signature "
                f"for rule: {shown}"
            )
        else:
            detail = f"{text} evaluating rule: {shown}"
        return [FieldError("FieldValueInvalid", path, kind, detail)]
    if isinstance(result, celpy.celtypes.BoolType) and bool(result):
        return []
    if result is True:
        return []
    detail = message or f"failed rule: {shown}"
    if rule.get("messageExpression"):
        try:
            evaluated = _cel_eval(rule["messageExpression"], value, old if old is not _OMIT else None)
            if str(evaluated).strip():
                detail = str(evaluated).strip()
        except Exception:  # noqa: BLE001 - the API server falls back to the message too
            pass
    where = path
    if rule.get("fieldPath"):
        where = (
            (path + rule["fieldPath"]) if rule["fieldPath"].startswith(".") else f"{path}.{rule['fieldPath']}"
        )
    bad = _OMIT if kind in ("object", "array") else value
    reason = {
        "FieldValueForbidden": "FieldValueForbidden",
        "FieldValueRequired": "FieldValueRequired",
        "FieldValueDuplicate": "FieldValueDuplicate",
    }.get(rule.get("reason") or "", "FieldValueInvalid")
    return [FieldError(reason, where, bad, detail)]


def admit_custom(
    emulator: ApiEmulator, resource: kmock.resource, obj: dict, old: dict | None
) -> tuple[dict, list[FieldError]]:
    """Prune and default a custom resource by its CRD's schema, then validate it."""
    found = stored_crd(emulator, resource)
    if found is None:
        return obj, []
    _, version = found
    schema = crd_schema(version)
    errors: list[FieldError] = []
    kind = emulator.resources[resource].kind
    if obj.get("kind") != kind:
        errors.append(FieldError("FieldValueInvalid", "kind", obj.get("kind"), f"must be {kind}"))
    group_version = f"{resource.group}/{resource.version}"
    if obj.get("apiVersion") != group_version:
        errors.append(
            FieldError("FieldValueInvalid", "apiVersion", obj.get("apiVersion"), f"must be {group_version}")
        )
    if schema is None:
        return obj, errors
    obj = default(prune(obj, schema, root=True), schema)
    errors += validate_schema(obj, schema, "")
    if not errors:
        errors += validate_cel(obj, old if old is not None else _OMIT, schema, "")
    return obj, errors


def default_on_read(emulator: ApiEmulator, resource: kmock.resource, obj: dict) -> dict:
    """Defaults of the CRD as it is now, applied to a stored object being read (as the API
    server does when it decodes from etcd). For an emulator hook on reads; a copy is returned."""
    found = stored_crd(emulator, resource)
    schema = crd_schema(found[1]) if found else None
    if schema is None:
        return obj
    return default(copy.deepcopy(obj), schema)


# ---------------------------------------------------------------------------------------------
# admit
# ---------------------------------------------------------------------------------------------


def admit(
    emulator: ApiEmulator,
    resource: kmock.resource,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    subresource: str | None = None,
) -> dict[str, Any]:
    """The object as it will be stored (defaulted, pruned), or raise 422 Invalid."""
    info = emulator.resources[resource]
    obj, errors = admit_custom(emulator, resource, obj, old)
    errors = validate_metadata(resource, obj, old) + validate_builtin(resource, obj) + errors
    if errors:
        name = (obj.get("metadata") or {}).get("name") or ""
        raise invalid_object(resource.group, info.kind or resource.plural, name, errors)
    return obj


# ---------------------------------------------------------------------------------------------
# Authentication and RBAC.
# ---------------------------------------------------------------------------------------------

# Granted to every authenticated user by the bootstrap ClusterRoles system:discovery,
# system:public-info-viewer and system:basic-user (not stored in the emulator).
DISCOVERY_URLS = (
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
    "/version/",
    "/openapi",
    "/openapi/*",
)
BASIC_USER = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
    ("authentication.k8s.io", "selfsubjectreviews"),
}


def service_account_token(namespace: str, name: str) -> str:
    """A bearer token the emulator accepts for `system:serviceaccount:NAMESPACE:NAME` while that
    ServiceAccount exists (a real cluster's tokens are JWTs bound to the account)."""
    return f"{SA_TOKEN_PREFIX}{namespace}:{name}"


def service_account_kubeconfig(api: K8sApi, namespace: str, name: str) -> Path:
    """A kubeconfig (0600, in the test's emulator directory) that acts as the ServiceAccount,
    context namespace NAMESPACE: for kopf (`KUBECONFIG`), the kubernetes client and kubectl."""
    # The token for clients that send it over HTTP (the kubernetes client, kopf); `as` for
    # kubectl, which sends no token over plain HTTP but does send impersonation headers.
    user = {
        "token": service_account_token(namespace, name),
        "as": f"system:serviceaccount:{namespace}:{name}",
    }
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": api.url}}],
        "users": [{"name": f"{namespace}-{name}", "user": user}],
        "contexts": [
            {
                "name": "kmock",
                "context": {"cluster": "kmock", "user": f"{namespace}-{name}", "namespace": namespace},
            }
        ],
        "current-context": "kmock",
    }
    path = api.workdir / f"kubeconfig-sa-{namespace}-{name}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        yaml.safe_dump(config, stream)
    return path


class User:
    def __init__(
        self, name: str, groups: list[str], namespace: str | None = None, account: str | None = None
    ):
        self.name, self.groups, self.namespace, self.account = name, groups, namespace, account


def _header(request: rendering.Request, name: str) -> str:
    return next((v for k, v in request.headers.items() if k.lower() == name), "")


def user_named(name: str, groups: list[str] | None = None) -> User | None:
    """A user as the API server derives it from a name; None for a member of system:masters."""
    groups = list(groups or [])
    if "system:masters" in groups:
        return None
    parts = name.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        namespace, account = parts[2], parts[3]
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
        return User(name, [*dict.fromkeys([*groups, "system:authenticated"])], namespace, account)
    return User(name, [*dict.fromkeys([*groups, "system:authenticated"])])


def authenticate(emulator: ApiEmulator, request: rendering.Request) -> User | None:
    """Who is asking: None for the admin, else the User RBAC decides for.

    A ServiceAccount token (`service_account_token`) is that account while it exists (401
    otherwise, as for a bound token). Every other request is the admin: the emulator's token,
    the arbitrary tokens of tests' stand-in kubeconfigs, and no token at all, because kubectl
    (client-go) sends no bearer token over plain HTTP. `Impersonate-User`/`Impersonate-Group`
    headers (kubeconfig `as:`, `kubectl --as`) then act as that user, as kube-apiserver does for
    a user allowed to impersonate (the admin is; anyone else needs the `impersonate` verb).
    """
    from tests.harness.k8s import api_error

    header = _header(request, "authorization")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    user: User | None = None
    if token.startswith(SA_TOKEN_PREFIX):
        namespace, _, name = token[len(SA_TOKEN_PREFIX) :].partition(":")
        if not (namespace and name and emulator._current(SERVICE_ACCOUNTS, namespace, name) is not None):
            raise api_error(401, "Unauthorized", "Unauthorized")
        user = user_named(f"system:serviceaccount:{namespace}:{name}")
    target = _header(request, "impersonate-user")
    if not target or (user is not None and target == user.name):
        return user
    groups = [v for k, v in request.headers.items() if k.lower() == "impersonate-group"]
    if user is not None:
        parts = target.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            check = Attributes.of("impersonate", "", "serviceaccounts", parts[3], parts[2])
        else:
            check = Attributes.of("impersonate", "", "users", target, "")
        if not allowed(emulator, user, check):
            raise forbidden(user, check)
    return user_named(target, groups)


class Attributes:
    """authorizer.Attributes of a request, as the API server's RequestInfo resolver makes them."""

    @classmethod
    def of(cls, verb: str, group: str, resource: str, name: str, namespace: str) -> Attributes:
        attrs = cls.__new__(cls)
        attrs.verb, attrs.group, attrs.resource, attrs.name, attrs.namespace = (
            verb,
            group,
            resource,
            name,
            namespace,
        )
        attrs.path, attrs.resource_request, attrs.subresource = "", True, ""
        return attrs

    def __init__(self, request: rendering.Request) -> None:
        method = request.method.value if hasattr(request.method, "value") else str(request.method)
        self.path = request.url.path
        resource = request.resource
        self.resource_request = resource is not None and resource.plural is not None
        self.group = resource.group if resource is not None else ""
        self.resource = resource.plural if self.resource_request else ""
        self.subresource = request.subresource or ""
        self.name = request.name or ""
        self.namespace = request.namespace or ""
        watch = (request.params.get("watch") or "").lower() in ("true", "1")
        if method in ("GET", "HEAD"):
            self.verb = "watch" if watch else ("get" if self.name else "list")
        else:
            self.verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "")
            if method == "DELETE":
                self.verb = "delete" if self.name else "deletecollection"
        if not self.resource_request:
            self.verb = {"watch": "get", "list": "get"}.get(self.verb, self.verb) or method.lower()
        if self.verb in ("list", "watch") and not self.name:
            fields = request.params.get("fieldSelector") or ""
            for term in fields.split(","):
                key, _, value = term.partition("=")
                if key.strip() == "metadata.name" and value and not value.startswith("="):
                    self.name = value.strip()
        if self.resource == "namespaces" and self.group == "" and self.name:
            self.namespace = self.name  # RequestInfo: a namespace's own namespace is its name

    def qualified_resource(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


def _subject_matches(subject: dict, user: User, binding_namespace: str | None) -> bool:
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return subject.get("name") == user.account and namespace == user.namespace
    if kind == "User":
        return subject.get("name") == user.name
    if kind == "Group":
        return subject.get("name") in user.groups
    return False


def _cluster_role_rules(emulator: ApiEmulator, name: str) -> list[dict]:
    roles = kmock.resource(RBAC, "v1", "clusterroles")
    role = emulator._current(roles, None, name)
    if role is None:
        return []
    rules = list(role.get("rules") or [])
    aggregation = role.get("aggregationRule") or {}
    for selector in aggregation.get("clusterRoleSelectors") or []:
        wanted = selector.get("matchLabels") or {}
        for other in emulator._live(roles, None):
            labels = (other.get("metadata") or {}).get("labels") or {}
            if other["metadata"]["name"] != name and all(labels.get(k) == v for k, v in wanted.items()):
                rules += other.get("rules") or []
    return rules


def _role_rules(emulator: ApiEmulator, ref: dict, namespace: str | None) -> list[dict]:
    if (ref.get("apiGroup") or RBAC) != RBAC:
        return []
    if ref.get("kind") == "ClusterRole":
        return _cluster_role_rules(emulator, ref.get("name") or "")
    if ref.get("kind") == "Role" and namespace:
        role = emulator._current(kmock.resource(RBAC, "v1", "roles"), namespace, ref.get("name") or "")
        return list((role or {}).get("rules") or [])
    return []


def applicable_rules(emulator: ApiEmulator, user: User, namespace: str) -> Iterator[dict]:
    """Rules of ClusterRoleBindings, then of RoleBindings in the request's namespace."""
    for binding in emulator._live(kmock.resource(RBAC, "v1", "clusterrolebindings"), None):
        if any(_subject_matches(s, user, None) for s in binding.get("subjects") or []):
            yield from _role_rules(emulator, binding.get("roleRef") or {}, None)
    if namespace:
        for binding in emulator._live(kmock.resource(RBAC, "v1", "rolebindings"), namespace):
            if any(_subject_matches(s, user, namespace) for s in binding.get("subjects") or []):
                yield from _role_rules(emulator, binding.get("roleRef") or {}, namespace)


def rule_allows(rule: dict, attrs: Attributes) -> bool:
    """rbac.RuleAllows: verbs, then apiGroups/resources/resourceNames or nonResourceURLs."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    if not attrs.resource_request:
        for url in rule.get("nonResourceURLs") or []:
            if url == "*" or url == attrs.path or (url.endswith("*") and attrs.path.startswith(url[:-1])):
                return True
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attrs.group not in groups:
        return False
    resources = rule.get("resources") or []
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    if not (
        "*" in resources
        or combined in resources
        or (attrs.subresource and f"*/{attrs.subresource}" in resources)
    ):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def allowed(emulator: ApiEmulator, user: User, attrs: Attributes) -> bool:
    if not attrs.resource_request:
        if attrs.verb == "get" and any(
            url == attrs.path or (url.endswith("*") and attrs.path.startswith(url[:-1]))
            for url in DISCOVERY_URLS
        ):
            return True
    elif attrs.verb == "create" and (attrs.group, attrs.resource) in BASIC_USER:
        return True
    return any(rule_allows(rule, attrs) for rule in applicable_rules(emulator, user, attrs.namespace))


def forbidden(user: User, attrs: Attributes) -> kmock.KubernetesError:
    """responsewriters.Forbidden → apierrors.NewForbidden, with the RBAC authorizer's empty reason."""
    from tests.harness.k8s import api_error

    if not attrs.resource_request:
        reason = f'User "{user.name}" cannot {attrs.verb} path "{attrs.path}"'
        return api_error(403, "Forbidden", f"forbidden: {reason}")
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    reason = (
        f'User "{user.name}" cannot {attrs.verb} resource "{resource}" in API group "{attrs.group}" {scope}'
    )
    subject = attrs.qualified_resource()
    subject = f'{subject} "{attrs.name}"' if attrs.name and attrs.verb not in ("list", "watch") else subject
    return api_error(
        403,
        "Forbidden",
        f"{subject} is forbidden: {reason}",
        name=attrs.name if attrs.verb not in ("list", "watch") else "",
        group=attrs.group,
        kind=attrs.resource,
    )


def authorize(emulator: ApiEmulator, request: rendering.Request) -> None:
    """Raise 401 for an unknown token, 403 Forbidden when the request's user may not do it."""
    user = authenticate(emulator, request)
    if user is None:
        return
    attrs = Attributes(request)
    if not allowed(emulator, user, attrs):
        raise forbidden(user, attrs)
    # Exec, attach and port-forward over WebSockets are GETs that also need `create`
    # (AuthorizePodWebsocketUpgradeCreatePermission, on by default since 1.31).
    if (
        attrs.resource_request
        and attrs.subresource in ("exec", "attach", "portforward")
        and attrs.verb == "get"
    ):
        attrs.verb = "create"
        if not allowed(emulator, user, attrs):
            raise forbidden(user, attrs)
