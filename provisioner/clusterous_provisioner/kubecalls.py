"""Thin helpers around kubernetes-client calls, shared by the CLI and the in-cluster autoscaler:
JSON bodies as plain dicts, a 404 as None, and a watch that resumes.

Answers are read as JSON, not turned into model classes: a field the client's models do not know
(a newer server, a custom resource) passes through, and the pure checks (kubeobjects.py) read
the same dicts whatever asked for them.
"""

from __future__ import annotations

import json

REQUEST_TIMEOUT = 15  # seconds for one Kubernetes API request


def json_body(call, *args, request_timeout: float = REQUEST_TIMEOUT, **kwargs):
    """A kubernetes-client call's JSON body as plain dicts (no model classes: any field passes)."""
    response = call(*args, _preload_content=False, _request_timeout=request_timeout, **kwargs)
    return json.loads(response.data or b"{}")


def get_or_none(call, *args):
    """The object, or None when the API says 404."""
    from kubernetes.client import ApiException

    try:
        return json_body(call, *args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def watch_objects(list_call, *args, timeout: float, **kwargs):
    """{name: object} of what `list_call(*args, **kwargs)` lists: once now, then after every
    change the API server reports, until `timeout` seconds have passed.

    Waiting on Kubernetes objects is a watch, not a poll: nothing is asked again until something
    changed. A watch the server closes early is resumed from the last resourceVersion; one that
    expired (410 Gone) starts over from a fresh list. Typed lists (models) and custom objects
    (dicts) both work; the caller stops whenever it has what it waits for.
    """
    import time

    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = list_call(*args, **kwargs)
        objects = {_meta(item, "name"): item for item in _field(listing, "items") or []}
        version = _meta(listing, "resource_version")
        yield objects
        watcher = watch.Watch()
        try:
            while (left := deadline - time.monotonic()) > 0:
                for event in watcher.stream(
                    list_call, *args, resource_version=version, timeout_seconds=max(1, int(left)), **kwargs
                ):
                    obj = event["object"]
                    version = _meta(obj, "resource_version") or version
                    if event["type"] == "DELETED":
                        objects.pop(_meta(obj, "name"), None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        objects[_meta(obj, "name")] = obj
                    else:
                        continue  # BOOKMARK
                    yield objects
                    if time.monotonic() >= deadline:
                        return
        except ApiException as exc:
            if exc.status != 410:
                raise
        finally:
            watcher.stop()


def _field(obj, name: str):
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _meta(obj, name: str):
    """metadata.<name> of a model or a dict (resource_version is resourceVersion in JSON)."""
    metadata = _field(obj, "metadata") or {}
    if isinstance(metadata, dict):
        return metadata.get({"resource_version": "resourceVersion"}.get(name, name))
    return getattr(metadata, name, None)


def events_for(api, name: str, namespace: str | None = None) -> list[dict]:
    from kubernetes import client

    core = client.CoreV1Api(api)
    selector = f"involvedObject.name={name}"
    if namespace:
        return json_body(core.list_namespaced_event, namespace, field_selector=selector).get("items") or []
    return json_body(core.list_event_for_all_namespaces, field_selector=selector).get("items") or []


def stuck_pods(api, namespace: str, match_labels: dict | None, limit: int = 3) -> list[str]:
    """What the not-ready pods of a workload say about themselves, with their last events (what
    `up` shows when a workload is not ready in time)."""
    from kubernetes import client

    from clusterous_provisioner.kubeobjects import conditions, pod_problem, selector_text

    core = client.CoreV1Api(api)
    pods = (
        json_body(core.list_namespaced_pod, namespace, label_selector=selector_text(match_labels)).get(
            "items"
        )
        or []
    )
    lines = []
    for pod in pods:
        ready = conditions(pod).get("Ready")
        if ready and ready.get("status") == "True":
            continue
        lines.append(pod_problem(pod, events_for(api, pod["metadata"]["name"], namespace)))
        if len(lines) >= limit:
            break
    return lines
