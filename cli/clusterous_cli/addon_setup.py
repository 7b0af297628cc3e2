"""What `up` writes into the cluster once k3s has applied the add-ons: the operator's code,
the autoscaler (its code and its manifest: addons.APPLIED_LATER), the registry's push credentials, the logging chart for the level asked for, and that level in
`cluster-info` (so a later `up` without a level keeps it).

Every write is idempotent: readiness.py's setup stage calls `set_up` again until the logging
chart settles, and a re-run of `up` repeats it without changing what is already right.
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterous_core.names import CLUSTER_INFO, NAMESPACE
from clusterous_provisioner.kubecalls import REQUEST_TIMEOUT, json_body


@dataclass(frozen=True)
class Setup:
    """What one `set_up` did: the operator code's state, the logging level and what
    `apply_logging` answered (None or UNINSTALLING: not settled yet, try again)."""

    operator_code: str
    logging_level: int
    logging: str | None
    autoscaler: str = "unchanged"


def set_up(api, info: dict, wanted_level: int | None, spot: bool = False) -> Setup:
    """Apply the operator code, the autoscaler, the spot watcher (`spot`: a group runs on spot),
    the push credentials and the logging chart; record the level in `cluster-info` (`info`, as
    read) once the chart settled. `wanted_level` None keeps the recorded level."""
    from kubernetes import client

    from clusterous_cli import buildjob, registry
    from clusterous_provisioner import code_bundle

    code = code_bundle.OPERATOR.apply(api, NAMESPACE)
    autoscaler = apply_autoscaler(api)
    if spot:
        from clusterous_provisioner import spot as spot_addon

        apply_manifest(api, spot_addon.manifest_text())
    registry.ensure_push_credentials(api, buildjob.PUSH_REGISTRY)  # issue 12 item 14
    recorded = str((info.get("data") or {}).get("loggingLevel") or "0")
    level = wanted_level
    if level is None:
        level = int(recorded) if recorded in ("0", "1", "2") else 0
    logging = apply_logging(api, level)
    if logging not in (None, UNINSTALLING) and recorded != str(level):
        client.CoreV1Api(api).patch_namespaced_config_map(
            CLUSTER_INFO,
            NAMESPACE,
            {"data": {"loggingLevel": str(level)}},
            _request_timeout=REQUEST_TIMEOUT,
        )
    return Setup(code, level, logging, autoscaler)


def apply_autoscaler(api) -> str:
    """The autoscaler's code ConfigMap, then its RBAC and Deployment (manifests/autoscaler.yaml,
    whose pod template carries the code hash: new code rolls the pod). Always deployed: without
    elastic groups it idles (docs/elastic.md, "Running it"). "created", "updated" or "unchanged"."""
    from clusterous_provisioner import addons
    from clusterous_provisioner.code_bundle import AUTOSCALER

    done = {AUTOSCALER.apply(api, NAMESPACE), *apply_manifest(api, addons.autoscaler_manifest())}
    return next(state for state in ("created", "updated", "unchanged") if state in done)


APPLIED_HASH = "clusterous.io/applied-hash"  # on each object: what `up` last applied


def apply_manifest(api, text: str) -> list[str]:
    """Create, or replace when it changed, every object of a manifest; one state per object.

    Each object carries the hash of what `up` sent, so a re-run replaces only what changed,
    whatever defaults the API server filled in."""
    import hashlib
    import json

    import yaml

    states = []
    for doc in (d for d in yaml.safe_load_all(text) if d):
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
        meta = doc["metadata"]
        meta.setdefault("annotations", {})[APPLIED_HASH] = digest
        version, plural = doc["apiVersion"], doc["kind"].lower() + "s"
        path = ("/api/" if "/" not in version else "/apis/") + version
        path += f"/namespaces/{meta['namespace']}/{plural}" if meta.get("namespace") else f"/{plural}"
        current = _request(api, "GET", f"{path}/{meta['name']}")
        if current is None:
            _request(api, "POST", path, doc)
            states.append("created")
        elif (current["metadata"].get("annotations") or {}).get(APPLIED_HASH) == digest:
            states.append("unchanged")
        else:
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            _request(api, "PUT", f"{path}/{meta['name']}", doc)
            states.append("updated")
    return states


def _request(api, method: str, path: str, body: dict | None = None) -> dict | None:
    """One API request with a JSON body; its answer as a dict, None for a 404 GET."""
    import json

    from kubernetes.client import ApiException

    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    request = api.param_serialize(
        method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    response = api.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
    response.read()
    if method == "GET" and response.status == 404:
        return None
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(
            http_resp=response, body=response.data.decode(errors="replace"), data=None
        )
    return json.loads(response.data or b"{}")


UNINSTALLING = "uninstalling"


def apply_logging(api, level: int) -> str | None:
    """Make the logging HelmChart match `level`: installed/updated/unchanged, or off; None while
    the HelmChart resource is not served yet, UNINSTALLING while a deleted chart is still held by
    k3s's helm-controller finalizer (it runs `helm uninstall` first): a chart written meanwhile
    would be deleted with it, so a new level waits until the old chart is gone."""
    from kubernetes import client
    from kubernetes.client import ApiException

    from clusterous_provisioner import logging_addon

    change = logging_addon.logging_manifests(level)
    group, version = change.api_version.split("/")
    custom = client.CustomObjectsApi(api)
    args = (group, version, change.namespace, "helmcharts")
    try:
        current = json_body(custom.get_namespaced_custom_object, *args, change.name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        current = None
    if current is not None and current["metadata"].get("deletionTimestamp"):
        return UNINSTALLING
    if change.action == "delete":
        if current is None:
            return "off"
        try:
            custom.delete_namespaced_custom_object(*args, change.name, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
        return UNINSTALLING
    body = change.manifest
    assert body is not None  # an "apply" change carries its manifest
    if current is None:
        try:
            custom.create_namespaced_custom_object(*args, body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:  # no such resource: k3s's helm-controller has not registered it yet
                return None
            raise
        return "installed"
    same = current.get("spec") == body["spec"] and all(
        (current["metadata"].get("annotations") or {}).get(k) == v
        for k, v in body["metadata"]["annotations"].items()
    )
    if same:
        return "unchanged"
    body = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
    }
    custom.replace_namespaced_custom_object(*args, change.name, body, _request_timeout=REQUEST_TIMEOUT)
    return "updated"
