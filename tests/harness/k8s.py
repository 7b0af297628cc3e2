"""Kubernetes API emulator for tests: kmock's Kubernetes emulator plus our adapter.

No kube-apiserver, k3s or kind can run on the test machines (DESIGN §6), yet the CLI,
the operator (kopf), the `kubernetes` client and real `kubectl` must talk to something
that behaves like one over HTTP. kmock (pinned in pyproject) provides the HTTP server,
request parsing, the versioned object store, the built-in resource catalogue,
API discovery and Status error bodies; `ApiEmulator` below replaces kmock's naive
write/watch semantics with the ones real clients rely on. See docs/testing.md.

It also plays the kubelet for two pod subresources. `pods/NAME/log` serves what the test wrote
with `K8sApi.write_pod_log` (container, follow, tailLines, timestamps). `pods/NAME/exec` speaks
the WebSocket channel protocol (v5/v4.channel.k8s.io, channel.k8s.io) and runs the command as a
**local process on this machine**, as the test user, with the pod's container env — the stand-in
for the container; it is killed when the client goes away or the emulator stops.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import datetime
import fcntl
import functools
import json
import os
import pty
import re
import secrets
import signal
import string
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import pytest
import yaml
from kmock._internal import apps, parsing, rendering

from tests.harness import k8s_admission, k8s_controllers
from tests.harness.tools import tool_path

SERVER_VERSION = {"major": "1", "minor": "37", "gitVersion": "v1.37.0-kmock", "platform": "linux/amd64"}
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CRD_RESOURCE = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES = kmock.resource("", "v1", "namespaces")
PODS = k8s_controllers.PODS
SERVICES = kmock.resource("", "v1", "services")
MERGE_KEYS = ("name", "containerPort", "mountPath", "devicePath", "type", "ip", "topologyKey")
WATCH_POLL_SECONDS = 0.5
# Exec subprotocols, newest first; "" (none offered) behaves as channel.k8s.io, as in Kubernetes.
# v4 and v5 end with a JSON Status on channel 3; v5 adds the client's CLOSE signal (255, channel).
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
# The exec'd process starts through this: with a tty it takes the pty as its controlling
# terminal (so shells get job control), then it execs the command; a command that cannot be
# started exits 126 with the message a container runtime prints.
EXEC_LAUNCHER = """
import os, sys
if sys.argv[1] == "tty":
    import fcntl, termios
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    why = "executable file not found in $PATH" if isinstance(exc, FileNotFoundError) else exc.strerror
    sys.stderr.write(
        f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{sys.argv[2]}": {why}: unknown\\n'
    )
    sys.exit(126)
"""

# ---------------------------------------------------------------------------------------------
# Errors: the Status bodies clients map to exceptions (kubernetes.ApiException, kubectl messages).
# ---------------------------------------------------------------------------------------------


def api_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    """A KubernetesError that kmock renders as a standard `Status` body with this reason."""
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details)


def expired(since: int, compacted: int) -> dict[str, Any]:
    """The Status a watch from a compacted resourceVersion ends with (HTTP 200, one ERROR event)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {since} ({compacted})",
        "reason": "Expired",
        "code": 410,
    }


def not_found(plural: str, name: str) -> kmock.KubernetesError:
    return api_error(404, "NotFound", f'{plural} "{name}" not found', name=name, kind=plural)


def invalid(message: str, **details: Any) -> kmock.KubernetesError:
    return api_error(422, "Invalid", message, **details)


# ---------------------------------------------------------------------------------------------
# Request parsing: kmock mis-parses /api/v1/namespaces[/name], so paths are parsed here.
# ---------------------------------------------------------------------------------------------


def parse_path(path: str) -> parsing.ParsedPath:
    """Split an API path into group/version/plural/namespace/name/subresource.

    Unlike kmock's parser, `namespaces/NAME[/status|finalize]` is the namespace resource itself.
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 2 and parts[0] == "apis":
        group, version, rest = parts[1], (parts[2] if len(parts) > 2 else None), parts[3:]
    else:
        return parsing.ParsedPath()
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return parsing.ParsedPath(group, version, plural, namespace, name, subresource)


async def parse_request(raw: aiohttp.web.BaseRequest, *, id: int) -> rendering.Request:
    """Build kmock's Request from a raw aiohttp request, with our path parser."""
    body = await raw.read()
    k8s = parse_path(raw.path)
    resource = (
        None if k8s.group is None else kmock.resource(group=k8s.group, version=k8s.version, plural=k8s.plural)
    )
    method = kmock.method(raw.method)
    return rendering.Request(
        id=id,
        raw_request=raw,
        url=raw.url,
        method=raw.method,
        params=dict(raw.query),
        headers=dict(raw.headers),
        cookies=dict(raw.cookies),
        data=decode_body(body),
        body=body,
        text=body.decode("utf-8", "replace"),
        action=parsing.guess_k8s(k8s, method, dict(raw.query)),
        resource=resource,
        namespace=k8s.namespace,
        name=k8s.name,
        subresource=k8s.subresource,
    )


def decode_body(body: bytes) -> Any:
    """JSON or YAML (server-side apply sends YAML); None if empty or undecodable."""
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        try:
            return yaml.safe_load(body)
        except yaml.YAMLError:
            return None


# ---------------------------------------------------------------------------------------------
# Selectors.
# ---------------------------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\((.*)\)\s*$")


def split_selector(text: str) -> list[str]:
    """Split on commas that are not inside `in (a,b)` parentheses."""
    terms, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def label_term(term: str) -> Callable[[dict[str, str]], bool]:
    """One requirement of a label selector: =, ==, !=, in, notin, exists, !exists."""
    if m := _SET_RE.match(term):
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if "!=" in term:
        key, value = (s.strip() for s in term.split("!=", 1))
        return lambda labels: labels.get(key) != value
    if "=" in term:
        key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
        return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        return lambda labels: term[1:].strip() not in labels
    return lambda labels: term in labels


def field_term(term: str) -> Callable[[dict[str, Any]], bool]:
    """One requirement of a field selector on a dotted path (metadata.name, metadata.namespace...)."""
    negate = "!=" in term
    path, value = (s.strip() for s in term.replace("!=", "=").replace("==", "=").split("=", 1))

    def check(obj: dict[str, Any]) -> bool:
        current: Any = obj
        for part in path.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        return (str(current) if current is not None else "") != value if negate else current == value

    return check


def selector_matches(obj: dict[str, Any], labels: str | None, fields: str | None) -> bool:
    label_checks = [label_term(t) for t in split_selector(labels or "")]
    field_checks = [field_term(t) for t in split_selector(fields or "")]
    obj_labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(c(obj_labels) for c in label_checks) and all(c(obj) for c in field_checks)


# ---------------------------------------------------------------------------------------------
# Patches.
# ---------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, None deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _merge_key(old: list[Any], new: list[Any]) -> str | None:
    """The field that identifies list items (e.g. containers by name), if every item has it."""
    items = old + new
    for key in MERGE_KEYS:
        if items and all(isinstance(i, dict) and key in i for i in items):
            return key
    return None


def strategic_merge(target: Any, patch: Any) -> Any:
    """A small approximation of strategic merge: enough for kubectl's client-side apply.

    Like a merge patch, but lists of dicts that share a merge key (name, containerPort...)
    are merged item by item, `$patch: delete` items are removed, and `$`-directives are
    dropped. No per-field patch strategies from the OpenAPI schema are known here.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        old = result.get(key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(old, list) and _merge_key(old, value):
            result[key] = _merge_lists(old, value, _merge_key(old, value))
        else:
            result[key] = strategic_merge(old, value)
    return result


def _merge_lists(old: list[dict[str, Any]], new: list[dict[str, Any]], key: str) -> list[Any]:
    merged = {item[key]: item for item in old}
    for item in new:
        if item.get("$patch") == "delete":
            merged.pop(item[key], None)
        else:
            merged[item[key]] = strategic_merge(merged.get(item[key]), item)
    return list(merged.values())


def json_patch(obj: dict[str, Any], operations: Any) -> dict[str, Any]:
    """RFC 6902 JSON patch; a failed `test` or a bad path is 422 Invalid, as in Kubernetes."""
    if not isinstance(operations, list):
        raise api_error(400, "BadRequest", "a JSON patch must be a list of operations")
    try:
        return jsonpatch.apply_patch(obj, operations)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise invalid(f"the server rejected our request due to an error in our request: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise invalid(f"the server rejected our request due to an error in our request: {exc}") from None


# ---------------------------------------------------------------------------------------------
# The emulator.
# ---------------------------------------------------------------------------------------------


@functools.cache
def builtin_resources() -> dict[kmock.resource, kmock.ResourceInfo]:
    """kmock's bundled catalogue of built-in resources (taken from k3s), loaded once."""
    catalogue = kmock.ResourcesArray()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # kmock uses importlib.resources.read_binary
        catalogue.load_bundled()
    return {resource: catalogue[resource] for resource in catalogue}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def body_of_spec(obj: dict[str, Any], has_status: bool) -> dict[str, Any]:
    """What counts as the object's spec for `generation`: all but metadata (and status)."""
    skipped = {"metadata", "status"} if has_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skipped}


@attrs.define(kw_only=True)
class ApiEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with Kubernetes' write, watch and discovery semantics.

    kmock routes requests by action (list/watch/fetch/create/update/delete) and keeps objects
    with their history in `self.objects`; the `_serve_*` handlers here replace kmock's, and
    `_handle` skips kmock's merge-everything pre-processing. User reactions added with kmock's
    DSL (e.g. `emulator['get /api/v1/nodes'] << 500`) still take priority over all of this.
    """

    _revision: int = attrs.field(default=0, init=False)
    _events: list[tuple[int, kmock.resource, dict[str, Any]]] = attrs.field(factory=list, init=False)
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    # Container logs: (pod uid, container) → [(RFC 3339 timestamp, line with its newline)].
    _pod_logs: dict[tuple[str, str], list[tuple[str, bytes]]] = attrs.field(factory=dict, init=False)
    _exec_processes: set[asyncio.subprocess.Process] = attrs.field(factory=set, init=False)
    # Where Services' cluster IPs point: allocated from k3s's 10.43.0.0/16, or one address every
    # Service gets (a test whose servers listen on 127.0.0.1 sets it to reach them through SSH).
    service_address: str | None = attrs.field(default=None, init=False)
    _service_ips: int = attrs.field(default=0, init=False)
    # Another writer (a controller, a second client) changes the object right after it is read:
    # (plural, name) → how many more reads get overtaken. A read-modify-PUT then meets 409.
    concurrent_writes: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)
    # Watches from a resourceVersion older than this are answered 410 Expired (etcd compaction).
    _compacted: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource, info in builtin_resources().items():
            self.resources[resource] = attrs.evolve(info)  # a copy: CRDs must not leak across tests
        self.fallback["put"] << self._serve_replace
        self.fallback["post", re.compile(r".*/pods/[^/]+/eviction$")] << self._serve_eviction
        self.fallback["get /apis/"] << self._serve_apis  # the kubernetes client asks with a slash
        self.fallback["get /api/"] << self._serve_api
        self.fallback["get /openapi/v3"] << self._serve_openapi_root
        self.fallback["get", re.compile(r"/openapi/v3/.+")] << self._serve_openapi_group
        self.fallback["get", re.compile(r"/openapi/v2")] << api_error(404, "NotFound", "use /openapi/v3")
        for name in DEFAULT_NAMESPACES:
            self._store(NAMESPACES, None, self._fill_new(NAMESPACES, None, {"metadata": {"name": name}}))

    # -- plumbing --------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """As kmock's RawHandler.__call__, but with our request parsing."""
        try:
            request = await parse_request(raw_request, id=len(self._requests))
        except Exception as exc:  # noqa: BLE001 - a malformed request is the client's 400
            return await self._render_error(api_error(400, "BadRequest", repr(exc)))
        self._requests.append(request)
        try:
            k8s_admission.authorize(self, request)
            return await self._handle(request)
        except rendering.StreamingError as exc:  # a stream already started: end it with an ERROR
            raw_response = exc.args[0]
            await self._stream_error(exc.__cause__ or exc, raw_response)
            await raw_response.write_eof()
            return raw_response
        except Exception as exc:  # noqa: BLE001 - every failure becomes a Status body
            return await self._render_error(exc)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Dispatch to user reactions and our fallbacks, skipping kmock's state pre-processing.

        Pod logs and exec are served first and directly with aiohttp: exec answers with a
        WebSocket, which kmock cannot render, and a kmock `Response` with its own Content-Type
        would leave that header on every later response of the same fallback reaction.
        """
        if request.resource == PODS and request.name and request.subresource == "exec":
            return await self._serve_exec(request)
        if request.resource == PODS and request.name and request.subresource == "log":
            return await self._serve_pod_log(request)
        return await apps.RawHandler._handle(self, request)

    async def _serve_eviction(self, request: rendering.Request) -> rendering.Response:
        """The Eviction API: delete the pod unless a PodDisruptionBudget allows no disruption now.

        As kube-apiserver's eviction REST handler: pending and finished pods go without a
        budget check; a pod matched by two budgets is an error; a budget whose status is not
        current, or that allows no disruption, answers 429 with a DisruptionBudget cause."""
        namespace, name = request.namespace or "default", request.name
        pod = self._current(PODS, namespace, name)
        if pod is None:
            raise not_found("pods", name)
        phase = (pod.get("status") or {}).get("phase")
        if phase not in ("Pending", "Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp"):
            labels = pod["metadata"].get("labels") or {}
            budgets = [
                b
                for b in self._live(k8s_controllers.PDBS, namespace)
                if b["spec"].get("selector") is not None
                and k8s_controllers.labels_match(b["spec"]["selector"], labels)
            ]
            if len(budgets) > 1:
                raise api_error(
                    500,
                    "InternalError",
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                )
            if budgets:
                await self._spend_disruption(budgets[0], name)
        await self.delete(PODS, namespace, name)
        success = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
        return rendering.Response(status=201, payload=success)

    async def _spend_disruption(self, budget: dict[str, Any], pod: str) -> None:
        status = budget.get("status") or {}
        meta = budget["metadata"]
        if (
            status.get("observedGeneration", 0) < meta.get("generation", 1)
            or status.get("disruptionsAllowed", 0) <= 0
        ):
            why = (
                f"The disruption budget {meta['name']} needs {status.get('desiredHealthy', 0)} healthy pods "
                f"and has {status.get('currentHealthy', 0)} currently"
            )
            raise api_error(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
                causes=[{"reason": "DisruptionBudget", "message": why}],
            )
        spent = {**status, "disruptionsAllowed": status["disruptionsAllowed"] - 1}
        spent["disruptedPods"] = {**(status.get("disruptedPods") or {}), pod: now_rfc3339()}
        await self.update(k8s_controllers.PDBS, meta["namespace"], meta["name"], {"status": spent}, "status")

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        """kmock's resource list of a group version, corrected as kubectl expects it.

        The core group is `v1`, not `/v1`; subresources carry no short names or categories
        (otherwise kubectl warns that `deploy` could also mean `deployments/status`).
        """
        result = await super()._serve_version(request)
        result["groupVersion"] = result["groupVersion"].lstrip("/")
        for entry in result["resources"]:
            if "/" in entry["name"]:
                entry.update(shortNames=[], categories=[])
        return result

    async def _serve_server_version(self, request: rendering.Request) -> rendering.Payload:
        return dict(SERVER_VERSION)

    def _info(self, resource: kmock.resource | None) -> kmock.ResourceInfo:
        """The catalogue entry of a served resource, or 404 as for an unknown URL."""
        if resource is None or resource.plural is None or resource not in self.resources:
            plural = resource.plural if resource else "?"
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({plural})")
        return self.resources[resource]

    def _get_resources(self) -> list[kmock.resource]:
        return list(self.resources)  # only what is served: bundled built-ins and served CRDs

    def _key(self, resource: kmock.resource, namespace: str | None, name: str) -> tuple[Any, ...]:
        return (resource, namespace, name)

    def _current(self, resource: kmock.resource, namespace: str | None, name: str) -> dict | None:
        key = self._key(resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def _live(self, resource: kmock.resource, namespace: str | None) -> Iterator[dict[str, Any]]:
        for (res, ns, _), obj in list(self.objects.items()):
            if res == resource and not obj.deleted and (namespace is None or ns == namespace):
                yield obj.raw

    def _store(self, resource: kmock.resource, namespace: str | None, obj: dict[str, Any]) -> None:
        key = self._key(resource, namespace, obj["metadata"]["name"])
        if key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj

    def _next_version(self) -> str:
        self._revision += 1
        return str(self._revision)

    async def _emit(self, resource: kmock.resource, kind: str, obj: dict[str, Any]) -> None:
        revision = int(obj["metadata"]["resourceVersion"])
        self._events.append((revision, resource, {"type": kind, "object": copy.deepcopy(obj)}))
        async with self._changed:
            self._changed.notify_all()

    async def close_watches(self) -> None:
        """End all watch and log streams and exec sessions so that the server can shut down."""
        self._closing = True
        for process in list(self._exec_processes):
            _kill_group(process)
        async with self._changed:
            self._changed.notify_all()

    # -- object lifecycle ------------------------------------------------------------------

    def _request_namespace(self, request: rendering.Request, info: kmock.ResourceInfo) -> str | None:
        return request.namespace if info.namespaced else None

    def _fill_new(self, resource: kmock.resource, namespace: str | None, obj: Any) -> dict[str, Any]:
        """Server-set fields of a new object: identity, versions, timestamps, defaults."""
        if not isinstance(obj, dict):
            raise api_error(400, "BadRequest", "the request body must be an object")
        info = self.resources[resource]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {}) or {}
        obj["metadata"] = meta
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        if not meta.get("name"):
            raise invalid("metadata.name: Required value: name or generateName is required")
        obj.setdefault("apiVersion", f"{resource.group}/{resource.version}".lstrip("/"))
        obj.setdefault("kind", info.kind)
        if namespace is not None:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        meta["resourceVersion"] = self._next_version()
        if "status" in info.subresources:
            obj.pop("status", None)  # status is written through /status only
        if resource == NAMESPACES:
            obj["status"] = {"phase": "Active"}
        if resource == SERVICES:
            self._allocate_cluster_ip(obj)
        return obj

    def _allocate_cluster_ip(self, service: dict[str, Any]) -> None:
        """The API server gives a Service its cluster IP on create (headless ones keep None)."""
        spec = service.setdefault("spec", {})
        if spec.get("type") == "ExternalName" or spec.get("clusterIP"):
            return
        self._service_ips += 1
        n = self._service_ips
        spec["clusterIP"] = self.service_address or f"10.43.{n // 256}.{n % 256}"
        spec["clusterIPs"] = [spec["clusterIP"]]

    def _check_namespace(self, namespace: str | None) -> None:
        if namespace is not None and self._current(NAMESPACES, None, namespace) is None:
            raise api_error(404, "NotFound", f'namespaces "{namespace}" not found', name=namespace)

    async def create(self, resource: kmock.resource, namespace: str | None, body: Any) -> dict:
        """Create an object as the API server would; also used by the test-facing helpers."""
        info = self._info(resource)
        if info.namespaced and isinstance(body, dict):
            body_ns = (body.get("metadata") or {}).get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise api_error(400, "BadRequest", "the namespace of the object does not match the request")
            namespace = namespace or body_ns or "default"
        namespace = namespace if info.namespaced else None
        self._check_namespace(namespace)
        name = (body.get("metadata") or {}).get("name") if isinstance(body, dict) else None
        if name and self._current(resource, namespace, name) is not None:
            raise api_error(409, "AlreadyExists", f'{resource.plural} "{name}" already exists', name=name)
        obj = k8s_admission.admit(self, resource, self._fill_new(resource, namespace, body), None)
        if resource == CRD_RESOURCE:
            obj["status"] = self._serve_crd(obj)
        self._store(resource, namespace, obj)
        await self._emit(resource, "ADDED", obj)
        return copy.deepcopy(obj)

    def _merge_write(self, info: kmock.ResourceInfo, old: dict, new: dict, subresource: str | None) -> dict:
        """Combine a written object with the stored one: status and spec are written separately."""
        has_status = "status" in info.subresources
        if subresource == "status":
            result = copy.deepcopy(old)
            result["status"] = new.get("status")
            if result["status"] is None:
                result.pop("status")
            return result
        if subresource:
            raise api_error(404, "NotFound", f"subresource {subresource} is not supported")
        result = copy.deepcopy(new)
        if has_status:
            result.pop("status", None)
            if "status" in old:
                result["status"] = copy.deepcopy(old["status"])
        return result

    def _preserve_metadata(self, old: dict, new: dict) -> None:
        """Fields a client can never change with a write."""
        meta = new.setdefault("metadata", {}) or {}
        new["metadata"] = meta
        for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        new.setdefault("apiVersion", old.get("apiVersion"))
        new.setdefault("kind", old.get("kind"))

    async def update(
        self,
        resource: kmock.resource,
        namespace: str | None,
        name: str,
        new: Any,
        subresource: str | None = None,
    ) -> dict:
        """Store a new full state of an existing object (after PUT or any kind of PATCH)."""
        info = self._info(resource)
        old = self._current(resource, namespace, name)
        if old is None:
            raise not_found(resource.plural, name)
        if not isinstance(new, dict):
            raise api_error(400, "BadRequest", "the request body must be an object")
        wanted_version = (new.get("metadata") or {}).get("resourceVersion")
        if wanted_version and wanted_version != old["metadata"]["resourceVersion"]:
            raise api_error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.plural} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                name=name,
            )
        result = self._merge_write(info, old, new, subresource)
        self._preserve_metadata(old, result)
        result = k8s_admission.admit(self, resource, result, old, subresource)
        result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if result == old:
            return old  # a no-op write changes nothing, as in Kubernetes
        has_status = "status" in info.subresources
        if body_of_spec(result, has_status) != body_of_spec(old, has_status):
            result["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        result["metadata"]["resourceVersion"] = self._next_version()
        return await self._commit_update(resource, namespace, result)

    async def _commit_update(self, resource: kmock.resource, namespace: str | None, obj: dict) -> dict:
        meta = obj["metadata"]
        if resource == CRD_RESOURCE:
            obj["status"] = self._serve_crd(obj)
        self._store(resource, namespace, obj)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return await self._remove(resource, namespace, obj)  # the last finalizer is gone
        await self._emit(resource, "MODIFIED", obj)
        return copy.deepcopy(obj)

    async def _remove(self, resource: kmock.resource, namespace: str | None, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._next_version()
        self.objects[self._key(resource, namespace, obj["metadata"]["name"])].delete()
        await self._emit(resource, "DELETED", obj)
        if resource == CRD_RESOURCE:
            self._unserve_crd(obj)
        return obj

    async def delete(self, resource: kmock.resource, namespace: str | None, name: str) -> dict:
        """Delete now, or only mark for deletion while finalizers remain (kopf relies on this)."""
        self._info(resource)
        old = self._current(resource, namespace, name)
        if old is None:
            raise not_found(resource.plural, name)
        if not old["metadata"].get("finalizers"):
            return await self._remove(resource, namespace, old)
        if old["metadata"].get("deletionTimestamp"):
            return old
        old["metadata"]["deletionTimestamp"] = now_rfc3339()
        old["metadata"]["resourceVersion"] = self._next_version()
        return await self._commit_update(resource, namespace, old)

    # -- CRDs ------------------------------------------------------------------------------

    def _serve_crd(self, crd: dict[str, Any]) -> dict[str, Any]:
        """A posted CustomResourceDefinition makes its resource served and discoverable.

        Returns the status a real API server's CRD controller would soon report.
        """
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        if not spec.get("group") or not names.get("plural") or not names.get("kind"):
            raise invalid("spec.group, spec.names.plural and spec.names.kind are required")
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            resource = kmock.resource(spec["group"], version["name"], names["plural"])
            self.resources[resource] = kmock.ResourceInfo(
                kind=names.get("kind"),
                singular=names.get("singular") or names.get("kind", "").lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=names.get("shortNames") or [],
                categories=names.get("categories") or [],
                verbs=["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                subresources=list((version.get("subresources") or {}).keys()),
            )
        conditions = [{"type": t, "status": "True"} for t in ("NamesAccepted", "Established")]
        return {
            "acceptedNames": names,
            "conditions": conditions,
            "storedVersions": [v["name"] for v in spec["versions"]],
        }

    def _unserve_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        for version in spec.get("versions") or []:
            resource = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
            if resource in self.resources:
                del self.resources[resource]

    # -- HTTP handlers (kmock routes by action to these) -----------------------------------

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        info = self._info(request.resource)
        namespace = self._request_namespace(request, info)
        obj = self._current(request.resource, namespace, request.name)
        if obj is None:
            raise not_found(request.resource.plural, request.name)
        key = (request.resource.plural, request.name)
        if self.concurrent_writes.get(key):
            self.concurrent_writes[key] -= 1
            await self._write_concurrently(request.resource, namespace, obj)
        return obj  # the reader holds this version, older than the stored one now

    async def _write_concurrently(self, resource: kmock.resource, namespace: str | None, obj: dict) -> None:
        changed = copy.deepcopy(obj)
        annotations = changed["metadata"].setdefault("annotations", {}) or {}
        count = int(annotations.get("test.clusterous.io/concurrent-writes", "0")) + 1
        annotations["test.clusterous.io/concurrent-writes"] = str(count)
        changed["metadata"]["annotations"] = annotations
        changed["metadata"].pop("resourceVersion", None)
        await self.update(resource, namespace, obj["metadata"]["name"], changed)

    def compact(self) -> None:
        """What etcd's periodic compaction does to watches: older resourceVersions are gone."""
        self._compacted = self._revision

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        info = self._info(request.resource)
        items = [
            copy.deepcopy(obj)
            for obj in self._live(request.resource, self._request_namespace(request, info))
            if selector_matches(obj, request.params.get("labelSelector"), request.params.get("fieldSelector"))
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        group_version = f"{request.resource.group}/{request.resource.version}".lstrip("/")
        return {
            "kind": f"{info.kind}List",
            "apiVersion": group_version,
            "metadata": {"resourceVersion": str(self._revision)},
            "items": items,
        }

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        info = self._info(request.resource)
        if request.name is not None:
            raise api_error(405, "MethodNotAllowed", "POST is only allowed on collections")
        obj = await self.create(request.resource, self._request_namespace(request, info), request.data)
        return rendering.Response(status=201, payload=obj)

    async def _serve_replace(self, request: rendering.Request) -> rendering.Payload:
        info = self._info(request.resource)
        if request.name is None:
            raise api_error(405, "MethodNotAllowed", "PUT is only allowed on named objects")
        namespace = self._request_namespace(request, info)
        return await self.update(request.resource, namespace, request.name, request.data, request.subresource)

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        """PATCH in all its flavours: merge, strategic merge (approximated), JSON patch, apply."""
        info = self._info(request.resource)
        namespace = self._request_namespace(request, info)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        old = self._current(request.resource, namespace, request.name)
        if content_type == "application/apply-patch+yaml":
            return await self._server_side_apply(request, namespace, old)
        if old is None:
            raise not_found(request.resource.plural, request.name)
        patchers = {
            "application/json-patch+json": json_patch,
            "application/merge-patch+json": merge_patch,
            "application/strategic-merge-patch+json": strategic_merge,
        }
        if content_type not in patchers:
            raise api_error(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {content_type}",
            )
        new = patchers[content_type](old, request.data)
        return await self.update(request.resource, namespace, request.name, new, request.subresource)

    async def _server_side_apply(
        self, request: rendering.Request, namespace: str | None, old: dict | None
    ) -> rendering.Payload:
        """Server-side apply without field ownership: create, or merge into the existing object."""
        body = request.data
        if not isinstance(body, dict):
            raise api_error(400, "BadRequest", "an apply patch must be an object")
        if old is None:
            if request.subresource:
                raise not_found(request.resource.plural, request.name)
            body.setdefault("metadata", {}).setdefault("name", request.name)
            obj = await self.create(request.resource, namespace, body)
            return rendering.Response(status=201, payload=obj)
        new = merge_patch(old, body)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        return await self.update(request.resource, namespace, request.name, new, request.subresource)

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        info = self._info(request.resource)
        namespace = self._request_namespace(request, info)
        obj = await self.delete(request.resource, namespace, request.name)
        if obj["metadata"].get("deletionTimestamp") and obj["metadata"].get("finalizers"):
            return obj  # still there, waiting for its finalizers
        if info.kind and request.resource.group == "":
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": request.name,
                    "kind": request.resource.plural,
                    "uid": obj["metadata"]["uid"],
                },
            }
        return obj

    # -- watch -----------------------------------------------------------------------------

    async def _serve_watch(self, request: rendering.Request) -> rendering.Payload:
        """Stream watch events as JSON lines; resourceVersion, timeoutSeconds and selectors apply."""
        info = self._info(request.resource)
        stream = self._watch_stream(request, self._request_namespace(request, info))
        return rendering.Response(payload=stream, headers={"Content-Type": "application/json"})

    def _initial_events(self, request: rendering.Request, namespace: str | None) -> tuple[list[dict], int]:
        # sendInitialEvents (the watch-list protocol) ends the initial ADDED events with a bookmark.
        """Events a watch starts with, and the index in the event log to continue from."""
        since = request.params.get("resourceVersion") or "0"
        initial = request.params.get("sendInitialEvents") == "true"
        if since != "0" and not initial:
            start = bisect.bisect_right([rv for rv, _, _ in self._events], int(since))
            return [], start
        added = [
            {"type": "ADDED", "object": copy.deepcopy(o)} for o in self._live(request.resource, namespace)
        ]
        if initial:
            bookmark = {
                "kind": self.resources[request.resource].kind,
                "metadata": {"resourceVersion": str(self._revision)},
            }
            bookmark["metadata"]["annotations"] = {"k8s.io/initial-events-end": "true"}
            added.append({"type": "BOOKMARK", "object": bookmark})
        return added, len(self._events)

    def _event_matches(self, request: rendering.Request, namespace: str | None, event: dict) -> bool:
        meta = event["object"]["metadata"]
        if namespace is not None and meta.get("namespace") != namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        params = request.params
        return selector_matches(event["object"], params.get("labelSelector"), params.get("fieldSelector"))

    async def _watch_stream(self, request: rendering.Request, namespace: str | None):
        yield b""  # send the headers now: clients wait for them before reading events
        since = int(request.params.get("resourceVersion") or 0)
        if 0 < since < self._compacted and request.params.get("sendInitialEvents") != "true":
            yield {"type": "ERROR", "object": expired(since, self._compacted)}
            return
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        deadline = None if timeout is None else time.monotonic() + timeout
        initial, cursor = self._initial_events(request, namespace)
        for event in initial:
            if event["type"] == "BOOKMARK" or self._event_matches(request, namespace, event):
                yield event
        while not self._closing and not self._client_gone(request):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            await self._wait_for_events(cursor, remaining)
            for _revision, resource, event in self._events[cursor:]:
                if resource == request.resource and self._event_matches(request, namespace, event):
                    yield event
            cursor = len(self._events)

    async def _wait_for_events(self, cursor: int, remaining: float | None) -> None:
        wait = WATCH_POLL_SECONDS if remaining is None else min(remaining, WATCH_POLL_SECONDS)
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: len(self._events) > cursor or self._closing), wait
                )

    @staticmethod
    def _client_gone(request: rendering.Request) -> bool:
        transport = request._raw_request.transport if request._raw_request is not None else None
        return transport is None or transport.is_closing()

    # -- pods: logs and exec (the kubelet's part, played by the test and by local processes) --

    def _pod_container(self, namespace: str, name: str, container: str | None) -> tuple[dict, str]:
        """The pod and the container a log or exec request means, with the API server's errors."""
        pod = self._current(PODS, namespace, name)
        if pod is None:
            raise not_found("pods", name)
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        if container:
            if names and container not in names:
                raise api_error(400, "BadRequest", f"container {container} is not valid for pod {name}")
            return pod, container
        if len(names) > 1:
            raise api_error(
                400,
                "BadRequest",
                f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]",
            )
        return pod, names[0] if names else ""

    async def write_pod_log(self, namespace: str, pod: str, text: str | bytes, container: str | None) -> None:
        """Append to a container's log as its runtime would; followers get the lines at once."""
        obj, container = self._pod_container(namespace, pod, container)
        data = text.encode() if isinstance(text, str) else text
        stamp = rfc3339_nano()
        lines = self._pod_logs.setdefault((obj["metadata"]["uid"], container), [])
        chunks = data.split(b"\n")
        if not chunks[-1]:
            chunks.pop()  # the text ended with a newline; a last unfinished line gets one
        lines.extend((stamp, chunk + b"\n") for chunk in chunks)
        async with self._changed:
            self._changed.notify_all()

    async def _serve_pod_log(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """GET pods/NAME/log (text/plain): container, follow, tailLines, timestamps; previous is 400.

        With follow, the stream goes on until the client leaves, the container terminates, the pod
        is deleted or we stop.
        """
        params = request.params
        pod, container = self._pod_container(request.namespace, request.name, params.get("container"))
        if is_true(params.get("previous")):
            raise api_error(
                400,
                "BadRequest",
                f'previous terminated container "{container}" in pod "{request.name}" not found',
            )
        try:
            tail = None if params.get("tailLines") is None else int(params["tailLines"])
        except ValueError:
            raise api_error(
                400, "BadRequest", f"tailLines: invalid integer {params['tailLines']!r}"
            ) from None
        if tail is not None and tail < 0:
            raise invalid(f"tailLines: Invalid value: {tail}: must be greater than or equal to 0")
        uid = pod["metadata"]["uid"]
        lines = self._pod_logs.setdefault((uid, container), [])
        cursor = 0 if tail is None else max(0, len(lines) - tail)
        stamps = is_true(params.get("timestamps"))
        if not is_true(params.get("follow")):
            return aiohttp.web.Response(body=render_log(lines[cursor:], stamps), content_type="text/plain")

        def pod_alive() -> bool:
            current = self._current(PODS, request.namespace, request.name)
            return current is not None and current["metadata"]["uid"] == uid

        def container_ended() -> bool:
            """As the kubelet does: a follow ends once the container has terminated."""
            status = (self._current(PODS, request.namespace, request.name) or {}).get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                return True
            states = {c.get("name"): c.get("state") or {} for c in status.get("containerStatuses") or []}
            return "terminated" in states.get(container, {})

        def changed(seen: int) -> bool:
            return len(lines) > seen or self._closing or not pod_alive() or container_ended()

        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request._raw_request)
        with contextlib.suppress(ConnectionError):
            while True:
                if cursor < len(lines):
                    chunk, cursor = render_log(lines[cursor:], stamps), len(lines)
                    await response.write(chunk)
                    continue
                if self._closing or self._client_gone(request) or not pod_alive() or container_ended():
                    break
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        woken = functools.partial(changed, cursor)
                        await asyncio.wait_for(self._changed.wait_for(woken), WATCH_POLL_SECONDS)
            await response.write_eof()
        return response

    async def _serve_exec(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """GET pods/NAME/exec upgraded to a WebSocket: the command runs as a local process.

        Checked before the upgrade, with the API server's messages: the pod and container exist,
        the pod has not completed, a command is given, at least one stream is wanted, the request
        is a WebSocket upgrade offering a supported channel protocol. With tty, stderr is dropped
        (it shares the terminal), as the API server does.
        """
        raw = request._raw_request
        assert raw is not None
        query = raw.query
        pod, container = self._pod_container(request.namespace, request.name, query.get("container"))
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            raise api_error(
                400,
                "BadRequest",
                f"cannot exec into a container in a completed pod; current phase is {phase}",
            )
        command = query.getall("command", [])
        stdin, stdout, stderr, tty = (is_true(query.get(k)) for k in ("stdin", "stdout", "stderr", "tty"))
        if not command:
            raise api_error(400, "BadRequest", "you must specify at least 1 command")
        if not (stdin or stdout or stderr):
            raise api_error(400, "BadRequest", "you must specify at least one of stdin, stdout, stderr")
        if raw.headers.get("Upgrade", "").lower() != "websocket":
            raise api_error(400, "BadRequest", "Upgrade request required")
        offered = [p.strip() for p in raw.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        protocol = next((p for p in offered if p in EXEC_PROTOCOLS), "" if not offered else None)
        if protocol is None:
            raise api_error(
                400,
                "BadRequest",
                f"requested protocol(s) are not supported: {offered}; supported protocols are {list(EXEC_PROTOCOLS)}",
            )
        env = {**os.environ, "HOSTNAME": request.name}
        for spec in (pod.get("spec") or {}).get("containers") or []:
            if spec.get("name") == container:
                env.update({e["name"]: str(e["value"]) for e in spec.get("env") or [] if "value" in e})
        if tty:
            env["TERM"] = "xterm"
        ws = aiohttp.web.WebSocketResponse(protocols=(protocol,) if protocol else ())
        await ws.prepare(raw)
        try:
            await ExecSession(ws, protocol, command, stdin, stdout, stderr and not tty, tty).run(
                env, self._exec_processes
            )
        except ConnectionError:
            pass  # the client went away; the process is gone too
        finally:
            await ws.close()
        return ws

    # -- OpenAPI (only what kubectl needs to skip client-side validation) -------------------

    def _group_versions(self) -> dict[str, list[kmock.resource]]:
        result: dict[str, list[kmock.resource]] = {}
        for resource in self.resources:
            path = (
                f"apis/{resource.group}/{resource.version}" if resource.group else f"api/{resource.version}"
            )
            result.setdefault(path, []).append(resource)
        return result

    async def _serve_openapi_root(self, request: rendering.Request) -> rendering.Payload:
        return {
            "paths": {
                path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={len(resources)}"}
                for path, resources in self._group_versions().items()
            }
        }

    async def _serve_openapi_group(self, request: rendering.Request) -> rendering.Payload:
        """Declare that PATCH supports fieldValidation, so kubectl leaves validation to the server."""
        path = request.url.path.removeprefix("/openapi/v3/")
        resources = self._group_versions().get(path)
        if not resources:
            raise api_error(404, "NotFound", f"no OpenAPI document for {path}")
        paths = {}
        for resource in resources:
            info = self.resources[resource]
            gvk = {"group": resource.group, "version": resource.version, "kind": info.kind}
            scope = "namespaces/{namespace}/" if info.namespaced else ""
            paths[f"/{path}/{scope}{resource.plural}/{{name}}"] = {
                "patch": {
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "OK"}},
                }
            }
        return {
            "openapi": "3.0.0",
            "info": {"title": "kmock", "version": "v1"},
            "paths": paths,
            "components": {},
        }


# ---------------------------------------------------------------------------------------------
# Pod logs and exec: the kubelet's and container runtime's part.
# ---------------------------------------------------------------------------------------------


def is_true(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def rfc3339_nano() -> str:
    """Now as the container runtime stamps log lines: RFC 3339 with nanoseconds, UTC."""
    ns = time.time_ns()
    seconds = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC)
    return f"{seconds:%Y-%m-%dT%H:%M:%S}.{ns % 1_000_000_000:09d}Z"


def render_log(lines: list[tuple[str, bytes]], stamps: bool) -> bytes:
    return b"".join((f"{stamp} ".encode() if stamps else b"") + line for stamp, line in lines)


def exec_status(protocol: str, command: list[str], code: int) -> bytes | None:
    """What the API server sends on channel 3 when the command ends (None: nothing).

    v4/v5: a Status, Success or Failure with reason NonZeroExitCode and the code as the
    ExitCode cause; older protocols: the error text, on failure only.
    """
    message = (
        f"command terminated with non-zero exit code: error executing command [{' '.join(command)}], "
        f"exit code {code}"
    )
    if protocol not in ("v4.channel.k8s.io", "v5.channel.k8s.io"):
        return None if code == 0 else message.encode()
    if code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    status = {
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }
    return json.dumps(status).encode()


def _kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


class ExecSession:
    """One exec: a local process (own session and process group) wired to the channels.

    stdin/stdout/stderr are pipes, or with tty one pseudo-terminal (resized through channel 4).
    Output goes out in binary frames as it comes; the exit status follows on channel 3, then
    the socket closes. v5's CLOSE of channel 0 closes the process's stdin (pipes only; a terminal
    stays open). If the client goes away first, the process group is killed.
    """

    def __init__(
        self,
        ws: aiohttp.web.WebSocketResponse,
        protocol: str,
        command: list[str],
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> None:
        self.ws, self.protocol, self.command = ws, protocol, command
        self.stdin, self.stdout, self.stderr, self.tty = stdin, stdout, stderr, tty
        self._send_lock = asyncio.Lock()

    async def send(self, channel: int, data: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_bytes(bytes([channel]) + data)

    async def run(self, env: dict[str, str], registry: set[asyncio.subprocess.Process]) -> None:
        master = slave = None
        pipe, null = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        if self.tty:
            master, slave = pty.openpty()
            stdio = {"stdin": slave, "stdout": slave, "stderr": slave}
        else:
            stdio = {
                "stdin": pipe if self.stdin else null,
                "stdout": pipe if self.stdout else null,
                "stderr": pipe if self.stderr else null,
            }
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                EXEC_LAUNCHER,
                "tty" if self.tty else "pipes",
                *self.command,
                env=env,
                start_new_session=True,
                **stdio,
            )
        except BaseException:
            if master is not None:
                os.close(master)
            raise
        finally:
            if slave is not None:
                os.close(slave)
        registry.add(process)
        finished = asyncio.ensure_future(self._output_and_exit(process, master))
        receiver = asyncio.ensure_future(self._receive(process, master))
        try:
            await asyncio.wait({finished, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if finished.done():
                status = exec_status(self.protocol, self.command, finished.result())
                if status is not None:
                    await self.send(ERROR, status)
                await self.ws.close()
        finally:
            # aiohttp cancels this handler when the client drops the connection (even right after
            # a clean close), so clean up before awaiting anything.
            _kill_group(process)
            registry.discard(process)
            for task in (finished, receiver):
                task.cancel()
            if master is not None:
                asyncio.get_running_loop().remove_reader(master)
                os.close(master)
            await asyncio.gather(finished, receiver, return_exceptions=True)

    async def _output_and_exit(self, process: asyncio.subprocess.Process, master: int | None) -> int:
        """Forward all output until EOF, then the exit code (128 + signal when killed)."""
        if master is not None:
            await self._pump_pty(master)
        else:
            streams = ((process.stdout, STDOUT), (process.stderr, STDERR))
            await asyncio.gather(*(self._pump(stream, channel) for stream, channel in streams if stream))
        code = await process.wait()
        return 128 - code if code < 0 else code

    async def _pump(self, stream: asyncio.StreamReader, channel: int) -> None:
        while data := await stream.read(65536):
            await self.send(channel, data)

    async def _pump_pty(self, master: int) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes] = asyncio.Queue()

        def readable() -> None:
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                return
            except OSError:  # EIO: every process holding the terminal is gone
                data = b""
            if not data:
                loop.remove_reader(master)
            chunks.put_nowait(data)

        os.set_blocking(master, False)
        loop.add_reader(master, readable)  # removed at EOF, or by run() before it closes the fd
        while data := await chunks.get():
            await self.send(STDOUT, data)

    async def _receive(self, process: asyncio.subprocess.Process, master: int | None) -> None:
        """Client → process: stdin, terminal size, v5 CLOSE; ends when the socket closes."""
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                data = message.data
            elif message.type == aiohttp.WSMsgType.TEXT:  # the kubernetes client sends str as text
                data = message.data.encode()
            else:
                break
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel == STDIN and self.stdin:
                await self._write_stdin(process, master, payload)
            elif channel == RESIZE and master is not None:
                with contextlib.suppress(ValueError, TypeError, KeyError, OSError):
                    size = json.loads(payload)
                    winsize = struct.pack("HHHH", int(size["Height"]), int(size["Width"]), 0, 0)
                    fcntl.ioctl(master, termios.TIOCSWINSZ, winsize)
            elif (
                channel == CLOSE
                and self.protocol == "v5.channel.k8s.io"
                and payload[:1] == bytes([STDIN])
                and process.stdin is not None
            ):
                process.stdin.close()

    @staticmethod
    async def _write_stdin(process: asyncio.subprocess.Process, master: int | None, data: bytes) -> None:
        if master is not None:
            while data:
                try:
                    data = data[os.write(master, data) :]
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                except OSError:
                    return
        elif process.stdin is not None and not process.stdin.is_closing():
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                process.stdin.write(data)
                await process.stdin.drain()


# ---------------------------------------------------------------------------------------------
# Running it in a background thread, and the test-facing object.
# ---------------------------------------------------------------------------------------------


class K8sApi:
    """A running emulator on 127.0.0.1, controlled from the (synchronous) test thread.

    The emulator lives in its own event loop in a daemon thread; every access to its state
    goes through that loop, so tests, kopf and clients never race with the server.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.emulator: ApiEmulator | None = None
        self.world = k8s_controllers.World()
        self.controllers: k8s_controllers.Controllers | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="k8s-api-emulator", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> K8sApi:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the Kubernetes API emulator did not start: {self._error!r}")
        self.kubeconfig = self._write_kubeconfig()
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.emulator = ApiEmulator()
        self.controllers = k8s_controllers.Controllers(self.emulator, self.world)
        async with self.emulator, kmock.Server(self.emulator, host="127.0.0.1") as server:
            self.url = f"http://127.0.0.1:{server.port}"
            running = asyncio.ensure_future(self.controllers.run())
            self._ready.set()
            await self._stop.wait()
            await self.emulator.close_watches()
            self.controllers.stop()
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    def _write_kubeconfig(self) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "kmock-test-token"}}],
            "contexts": [
                {"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}
            ],
            "current-context": "kmock",
        }
        path = self.workdir / "kubeconfig"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            yaml.safe_dump(config, stream)
        return path

    def call(self, fn: Callable[[ApiEmulator], Any], timeout: float = 10) -> Any:
        """Run `fn(emulator)` (sync, or returning a coroutine) inside the emulator's loop."""

        async def runner() -> Any:
            result = fn(self.emulator)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(runner(), self._loop).result(timeout)

    # -- access to stored objects ----------------------------------------------------------

    def resource(self, spec: str) -> kmock.resource:
        """'v1/configmaps', 'apps/v1/deployments', 'configmaps', 'capp' (short name) → resource."""
        return self.call(lambda emulator: find_resource(emulator, spec))

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict | None:
        res = self.resource(resource)
        return self.call(lambda emulator: emulator._current(res, _scope(emulator, res, namespace), name))

    def list(self, resource: str, namespace: str | None = None) -> list[dict]:
        res = self.resource(resource)
        return self.call(lambda emulator: copy.deepcopy(list(emulator._live(res, namespace))))

    def history(self, resource: str, name: str, namespace: str | None = None) -> list[dict | None]:
        """Every stored version of an object, None marking a deletion (kmock's history)."""
        res = self.resource(resource)

        def read(emulator: ApiEmulator) -> list[dict | None]:
            obj = emulator.objects[res, _scope(emulator, res, namespace), name]
            return [None if v is None else copy.deepcopy(v.raw) for v in obj.history]

        return self.call(read)

    def create(self, resource: str, body: dict, namespace: str | None = None) -> dict:
        res = self.resource(resource)
        return self.call(lambda emulator: emulator.create(res, namespace, body))

    def patch(self, resource: str, name: str, patch: dict, namespace: str | None = None) -> dict:
        """A JSON merge patch, as a client's PATCH would apply it (watchers see MODIFIED)."""
        res = self.resource(resource)

        async def apply(emulator: ApiEmulator) -> dict:
            scope = _scope(emulator, res, namespace)
            old = emulator._current(res, scope, name)
            if old is None:
                raise KeyError(f"{resource} {name!r} does not exist")
            return await emulator.update(res, scope, name, merge_patch(old, patch))

        return self.call(apply)

    def delete(self, resource: str, name: str, namespace: str | None = None) -> dict:
        """Delete as a client's DELETE would (finalizers hold it; log follows of a pod end)."""
        res = self.resource(resource)
        return self.call(lambda emulator: emulator.delete(res, _scope(emulator, res, namespace), name))

    def write_status(self, resource: str, name: str, status: dict, namespace: str | None = None) -> dict:
        res = self.resource(resource)
        return self.call(lambda emulator: emulator.update(res, namespace, name, {"status": status}, "status"))

    def overtake_reads(self, resource: str, name: str, times: int = 1) -> None:
        """The next `times` reads of the object are overtaken by another writer (see 409 tests)."""
        res = self.resource(resource)
        self.call(lambda emulator: emulator.concurrent_writes.__setitem__((res.plural, name), times))

    def compact(self) -> None:
        """Compact the history: a watch resumed from an older resourceVersion gets 410 Expired."""
        self.call(lambda emulator: emulator.compact())

    def write_pod_log(
        self, namespace: str, pod: str, text: str | bytes, container: str | None = None
    ) -> None:
        """Append lines to a container's log (default: the pod's only container), as the
        container would print them; `follow` streams get them at once. The pod must exist."""
        self.call(lambda emulator: emulator.write_pod_log(namespace, pod, text, container))

    def wait_for(self, condition: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
        """Poll `condition()` until truthy; fail the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := condition():
                return result
            time.sleep(0.05)
        pytest.fail(f"timed out after {timeout}s waiting for {what}")

    def add_node(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        cpu: str | int = "2",
        memory: str = "4Gi",
        ready: bool = True,
        taints: list[dict] | None = None,
    ) -> dict:
        """Register a Node as a kubelet would: no controller here creates them."""
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})}
        spec = {"taints": taints} if taints else {}
        self.create(
            "v1/nodes",
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": spec},
        )
        capacity = {"cpu": str(cpu), "memory": memory, "pods": "110"}
        condition = {"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady"}
        status = {"capacity": capacity, "allocatable": dict(capacity), "conditions": [condition]}
        return self.write_status("v1/nodes", name, status)


def _scope(emulator: ApiEmulator, resource: kmock.resource, namespace: str | None) -> str | None:
    return (namespace or "default") if emulator.resources[resource].namespaced else None


def find_resource(emulator: ApiEmulator, spec: str) -> kmock.resource:
    parts = spec.split("/")
    if len(parts) == 3 or (len(parts) == 2 and parts[0] == "v1"):
        group, version, plural = ("", *parts) if len(parts) == 2 else parts
        return kmock.resource(group, version, plural)
    for resource in emulator.resources:
        info = emulator.resources[resource]
        if spec in {resource.plural, info.singular, (info.kind or "").lower(), *info.shortnames}:
            return resource
    raise KeyError(f"no served resource matches {spec!r}")


# ---------------------------------------------------------------------------------------------
# kubectl (the binary from scripts/fetch-k8s-tools, never the system one).
# ---------------------------------------------------------------------------------------------


def require_kubectl() -> Path:
    """The real kubectl; skipped locally when absent but failing in CI (tools.tool_path)."""
    return tool_path("kubectl")


class Kubectl:
    """Runs the real kubectl against the emulator, with a private cache directory."""

    def __init__(self, binary: Path, api: K8sApi) -> None:
        self.binary = binary
        self.api = api
        self.env = {
            **os.environ,
            "KUBECONFIG": str(api.kubeconfig),
            "KUBECACHEDIR": str(api.workdir / "kube-cache"),
            "HOME": str(api.workdir),
        }

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 30):
        result = subprocess.run(
            [str(self.binary), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen:
        """Start a long-running kubectl (e.g. `get -w`); the caller terminates it."""
        return subprocess.Popen(
            [str(self.binary), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
        )


# ---------------------------------------------------------------------------------------------
# Fixtures.
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def k8s_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sApi]:
    """A fresh Kubernetes API emulator per test; `.url`, `.kubeconfig`, `.add_node()`, `.get()`..."""
    api = K8sApi(tmp_path_factory.mktemp("k8s-api")).start()
    try:
        yield api
    finally:
        api.stop()
    assert not api.controllers.errors, f"the emulator's controllers failed: {api.controllers.errors!r}"


@pytest.fixture()
def kubectl(k8s_api: K8sApi) -> Kubectl:
    """The real kubectl pointed at `k8s_api` (skipped locally if absent, failing in CI)."""
    return Kubectl(require_kubectl(), k8s_api)
