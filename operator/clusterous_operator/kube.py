"""The operator's writes to the Kubernetes API (the only I/O outside kopf itself).

Responses are read as raw JSON (`_preload_content=False`): the operator needs a name or a
resourceVersion from them, not the client's models, whose strict parsing can fail on fields
a newer or different API server adds.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Mapping

from clusterous_core.names import AUTOSCALER_RECORD, GROUP, NAMESPACE, PLURAL, VERSION
from clusterous_operator.builders import APP_LABEL, Change

log = logging.getLogger(__name__)

# kind -> (API class, the suffix of its namespaced methods)
_APIS = {
    "Deployment": ("AppsV1Api", "deployment"),
    "Service": ("CoreV1Api", "service"),
    "PersistentVolumeClaim": ("CoreV1Api", "persistent_volume_claim"),
}
# Deletion order: what runs first, what it uses last.
DELETION_ORDER = ("Deployment", "Service", "PersistentVolumeClaim")
_PAST = {"create": "created", "replace": "updated", "delete": "deleted"}
CONFLICT_ATTEMPTS = 5  # a read-modify-replace overtaken by another writer (409) is redone


_client = None  # one API client (and connection pool) per run of the operator, made by login()
ELASTIC_SECONDS = 10.0  # how long the elastic groups read are reused (reconciliations are frequent)
_elastic: tuple[float, frozenset[str]] = (float("-inf"), frozenset())


def login() -> None:
    """In-cluster credentials when running as a pod, else the kubeconfig (`kopf run` on a laptop)."""
    import os

    import kubernetes

    global _client, _elastic
    _elastic = (float("-inf"), frozenset())  # a new operator run reads the record afresh
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        # KUBECONFIG is read now, not when kubernetes was imported.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    if _client is not None:
        _client.close()
    _client = kubernetes.client.ApiClient()


def _api_client():
    """The client login() made, whose connections are kept between reconciliations; a fresh one
    (closed on leaving the `with`) if login() has not run."""
    import kubernetes

    return contextlib.nullcontext(_client) if _client is not None else kubernetes.client.ApiClient()


def apply_changes(changes: Iterable[Change], namespace: str) -> list[str]:
    """Make each change; returns what was done, e.g. 'created Deployment app-master'.

    A create that finds the object already there (a concurrent resync) is left for the next
    resync to compare, and a delete that finds nothing is done.
    """
    import kubernetes

    done = []
    with _api_client() as client:
        for change in changes:
            kind, name = change.obj["kind"], change.obj["metadata"]["name"]
            api_class, suffix = _APIS[kind]
            api = getattr(kubernetes.client, api_class)(client)
            try:
                _write(api, suffix, change, name, namespace)
            except kubernetes.client.ApiException as exc:
                if (change.verb, exc.status) in (("create", 409), ("delete", 404)):
                    continue
                raise
            done.append(f"{_PAST[change.verb]} {kind} {name}")
    return done


def patch_status(namespace: str, name: str, status: Mapping) -> None:
    """Merge-patch a ClusterApp's status subresource (no resourceVersion: never a 409)."""
    import kubernetes

    with _api_client() as client:
        api = kubernetes.client.CustomObjectsApi(client)
        _call(
            api,
            "patch_namespaced_custom_object_status",
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
        )


def delete_children(namespace: str, app_name: str) -> tuple[list[str], list[str]]:
    """Delete every object labelled with the app (there may be no garbage collector).

    Returns (deleted, failed); never raises for one object, so the finalizer is released.
    """
    import kubernetes

    deleted, failed = [], []
    selector = f"{APP_LABEL}={app_name}"
    with _api_client() as client:
        for kind in DELETION_ORDER:
            api_class, suffix = _APIS[kind]
            api = getattr(kubernetes.client, api_class)(client)
            try:
                listing = _call(api, f"list_namespaced_{suffix}", namespace, label_selector=selector)
            except Exception as exc:  # noqa: BLE001 - reported; the finalizer must still go
                failed.append(f"list {kind}: {exc}")
                continue
            for item in listing.get("items") or []:
                name = item["metadata"]["name"]
                try:
                    _call(
                        api, f"delete_namespaced_{suffix}", name, namespace, propagation_policy="Background"
                    )
                    deleted.append(f"{kind} {name}")
                except kubernetes.client.ApiException as exc:
                    if exc.status != 404:
                        failed.append(f"{kind} {name}: {exc.reason}")
                except Exception as exc:  # noqa: BLE001 - reported; the finalizer must still go
                    failed.append(f"{kind} {name}: {exc}")
    return deleted, failed


# (connect, read) seconds: a handler thread blocked on a silent API server would hold kopf's
# shutdown (and the next reconcile) forever; a timeout turns it into a retried error.
REQUEST_TIMEOUT = (5, 30)


def elastic_groups() -> frozenset[str]:
    """The node groups the autoscaler may grow, from its record (`groups` of the ConfigMap `up`
    writes): they exist even with no node. Empty without a record, or when it cannot be read
    (the groups with nodes are then the only ones known, as before)."""
    import time

    from kubernetes import client

    global _elastic
    if time.monotonic() < _elastic[0]:
        return _elastic[1]
    try:
        with _api_client() as api:
            found = _call(client.CoreV1Api(api), "read_namespaced_config_map", AUTOSCALER_RECORD, NAMESPACE)
        groups = frozenset(json.loads((found.get("data") or {}).get("groups") or "{}"))
    except Exception as exc:  # noqa: BLE001 - 404 (no elastic group), 403, a malformed record
        log.debug("no elastic groups: %s", exc)
        groups = frozenset()
    _elastic = (time.monotonic() + ELASTIC_SECONDS, groups)
    return groups


def _call(api, method: str, *args, **kwargs) -> dict:
    """Call an API method and return its response body as plain JSON."""
    response = getattr(api, method)(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
    data = response.data
    return json.loads(data) if data else {}


def _write(api, suffix: str, change: Change, name: str, namespace: str) -> None:
    if change.verb == "create":
        _call(api, f"create_namespaced_{suffix}", namespace, dict(change.obj))
    elif change.verb == "delete":
        _call(api, f"delete_namespaced_{suffix}", name, namespace, propagation_policy="Background")
    elif suffix == "persistent_volume_claim":
        # A claim's spec is immutable once bound: only its labels and annotations can follow.
        metadata = {k: change.obj["metadata"][k] for k in ("labels", "annotations")}
        _call(api, f"patch_namespaced_{suffix}", name, namespace, {"metadata": metadata})
    else:
        _replace(api, suffix, change.obj, name, namespace)


def _replace(api, suffix: str, obj: Mapping, name: str, namespace: str) -> None:
    """PUT the object, keeping what the server owns (resourceVersion, a Service's cluster IP).

    Controllers write the object's status meanwhile (a Deployment's, all the time): a PUT that
    meets 409 Conflict reads the object afresh and tries again."""
    import kubernetes

    for attempt in range(CONFLICT_ATTEMPTS):
        current = _call(api, f"read_namespaced_{suffix}", name, namespace)
        body = dict(obj)
        body["metadata"] = {**obj["metadata"], "resourceVersion": current["metadata"].get("resourceVersion")}
        if suffix == "service":
            was_headless = current.get("spec", {}).get("clusterIP") == "None"
            if was_headless != (obj["spec"].get("clusterIP") == "None"):
                # A Service's cluster IP is immutable: switching to or from headless means a new one.
                _call(api, "delete_namespaced_service", name, namespace)
                _call(api, "create_namespaced_service", namespace, dict(obj))
                return
            body["spec"] = {
                **obj["spec"],
                **{k: current["spec"][k] for k in ("clusterIP", "clusterIPs") if k in current["spec"]},
            }
        try:
            _call(api, f"replace_namespaced_{suffix}", name, namespace, body)
            return
        except kubernetes.client.ApiException as exc:
            if exc.status != 409 or attempt == CONFLICT_ATTEMPTS - 1:
                raise
