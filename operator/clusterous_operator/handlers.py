"""The kopf handlers: thin. They read kopf's in-memory indices, call `reconcile.decide` and write
only the difference. Run locally with `kopf run -A -m clusterous_operator.handlers`.

Every ClusterApp is reconciled when it changes and again every CLUSTEROUS_RESYNC_SECONDS
(default 10): the resync is the debounced watch on Nodes, Pods and Deployments, which kopf
keeps in indices, so nodes joining or leaving change `auto` replicas within one interval,
however many node events arrive. A resync with nothing changed makes no API call.
"""

from __future__ import annotations

import datetime
import logging
import os
import time

import kopf

from clusterous_operator import kube
from clusterous_operator.builders import APP_LABEL, SPEC_HASH_ANNOTATION, plan_changes
from clusterous_operator.reconcile import decide, status_changed

CAPP = ("clusterous.io", "v1alpha1", "clusterapps")
RESYNC_SECONDS = float(os.environ.get("CLUSTEROUS_RESYNC_SECONDS", "10"))
FINALIZER = "clusterous.io/finalizer"
RECENT_WRITE_SECONDS = 30.0  # trust our own writes over the indices for this long


class NoDiffBase(kopf.DiffBaseStorage):
    """No last-handled configuration on the object.

    kopf keeps one to tell on.create from on.update handlers and to give them a diff; our only
    change handler is on.delete, which needs neither (every add and edit goes through on.event
    and is compared with the cluster, not with a stored copy). Kept as an annotation, it would
    cost one more write per new ClusterApp and one more reconciliation of its event. Nothing
    is kept, so nothing is built either: kopf would otherwise copy every watched object (child
    Deployments, Pods...) on each of its events to compare it with nothing.
    """

    def build(self, *, body: kopf.Body, extra_fields=None) -> dict:
        return {}

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    """Keep kopf's bookkeeping in our own annotations (the status is ours), then log in."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="clusterous.io")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.INFO
    kube.login()


@kopf.on.login()
def login(**kwargs) -> kopf.ConnectionInfo | None:
    """The pod's service account in the cluster, else $KUBECONFIG as it is when kopf starts."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.index("nodes")
async def node_index(body: kopf.Body, **_) -> dict:
    return {
        None: _trim(
            body,
            ("metadata", "name"),
            ("metadata", "labels"),
            ("spec",),
            ("status", "allocatable"),
            ("status", "conditions"),
        )
    }


@kopf.index("pods")
async def pod_index(body: kopf.Body, **_) -> dict:
    return {
        None: _trim(
            body,
            ("metadata", "name"),
            ("metadata", "namespace"),
            ("metadata", "labels"),
            ("spec", "nodeName"),
            ("spec", "containers"),
            ("status", "phase"),
            ("status", "conditions"),
            ("status", "containerStatuses"),
        )
    }


@kopf.index("deployments", labels={APP_LABEL: kopf.PRESENT})
async def deployment_index(body: kopf.Body, namespace: str, labels: kopf.Labels, **_) -> dict:
    return {
        (namespace, labels[APP_LABEL]): _trim(
            body, ("kind",), ("metadata",), ("spec", "replicas"), ("status",)
        )
    }


@kopf.index("services", labels={APP_LABEL: kopf.PRESENT})
async def service_index(
    namespace: str, name: str, labels: kopf.Labels, annotations: kopf.Annotations, **_
) -> dict:
    return {(namespace, labels[APP_LABEL]): ("Service", name, annotations.get(SPEC_HASH_ANNOTATION))}


@kopf.index("persistentvolumeclaims", labels={APP_LABEL: kopf.PRESENT})
async def claim_index(
    namespace: str, name: str, labels: kopf.Labels, annotations: kopf.Annotations, **_
) -> dict:
    return {
        (namespace, labels[APP_LABEL]): ("PersistentVolumeClaim", name, annotations.get(SPEC_HASH_ANNOTATION))
    }


def _news(body: kopf.Body, type: str | None, memo: kopf.Memo, **_) -> bool:
    """Whether an event of a ClusterApp can change what the app should be (checked in kopf's
    loop, before a thread is taken): not a deletion (on_delete's), not before the finalizer
    (see `reconcile`), not the echo of our own status write with the spec unchanged."""
    meta = body.get("metadata", {})
    if type == "DELETED" or meta.get("deletionTimestamp") or FINALIZER not in (meta.get("finalizers") or []):
        return False
    generation, status = memo.get("status_written", (None, None))
    return generation != meta.get("generation") or status_changed(body.get("status"), status)


@kopf.on.event(*CAPP, when=_news)
def on_change(body: kopf.Body, patch: kopf.Patch, logger, **indices) -> None:
    """Every add or edit of a ClusterApp (and kopf's first listing after a restart) that `_news`
    lets through; what changes around the app waits for the resync."""
    reconcile(body, patch, logger, **indices)


@kopf.timer(*CAPP, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync(body: kopf.Body, patch: kopf.Patch, logger, **indices) -> None:
    """Follow what changed around the app: nodes, pods, readiness of dependencies."""
    reconcile(body, patch, logger, **indices)


@kopf.on.delete(*CAPP)
def on_delete(body: kopf.Body, namespace: str, name: str, logger, **_) -> None:
    """Delete the children explicitly (there may be no garbage collector); never hold the
    finalizer: what could not be deleted is reported as a warning Event."""
    deleted, failed = kube.delete_children(namespace, name)
    if deleted:
        logger.info("deleted %s", ", ".join(deleted))
    if failed:
        kopf.warn(body, reason="DeleteFailed", message="could not delete: " + "; ".join(failed))


def reconcile(
    body: kopf.Body,
    patch: kopf.Patch,
    logger,
    memo: kopf.Memo,
    node_index: kopf.Index,
    pod_index: kopf.Index,
    deployment_index: kopf.Index,
    service_index: kopf.Index,
    claim_index: kopf.Index,
    **_,
) -> None:
    """Decide, then write the child changes and the status only where they differ."""
    meta = body.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return
    if FINALIZER not in (meta.get("finalizers") or []):
        # kopf adds the finalizer (for on.delete and the resync timer) after this handler, in a
        # write whose event starts the next reconciliation at once; everything waits for it.
        # No child can then exist without the finalizer that deletes it. And a status written
        # now would arrive first, in an event without the finalizer, on which kopf would try
        # to add it a second time, in vain.
        return
    key = (meta.get("namespace"), meta.get("name"))
    deployments = list(deployment_index.get(key, []))
    decision = decide(body, node_index.get(None, []), pod_index.get(None, []), deployments, now=_now())
    if decision.error is None:
        existing = {
            **{(d["kind"], d["metadata"]["name"]): _hash(d) for d in deployments},
            **{(kind, name): digest for kind, name, digest in service_index.get(key, [])},
            **{(kind, name): digest for kind, name, digest in claim_index.get(key, [])},
        }
        changes = plan_changes(decision.children, {**existing, **_recent_writes(memo)})
        kopf.adopt([c.obj for c in changes if c.verb != "delete"], owner=body)
        done = kube.apply_changes(changes, key[0])
        _remember_writes(memo, changes)
        if done:
            logger.info("%s", "; ".join(done))
            kopf.info(body, reason="Reconciled", message="; ".join(done))
    old = body.get("status") or {}
    if status_changed(old, decision.status):
        patch.status.update(decision.status)
        memo["status_written"] = (meta.get("generation"), decision.status)
        if old.get("phase") != decision.status["phase"]:
            post = kopf.warn if decision.status["phase"] in ("Failed", "Degraded", "Pending") else kopf.info
            post(body, reason=decision.status["phase"], message=decision.status["message"])


def _recent_writes(memo: kopf.Memo) -> dict:
    """What we wrote a moment ago: the indices learn it only when the watch event arrives."""
    now = time.monotonic()
    return {
        key: digest
        for key, (digest, at) in memo.get("written", {}).items()
        if now - at < RECENT_WRITE_SECONDS
    }


def _remember_writes(memo: kopf.Memo, changes) -> None:
    written = memo.setdefault("written", {})
    for change in changes:
        key = (change.obj["kind"], change.obj["metadata"]["name"])
        if change.verb == "delete":
            written.pop(key, None)
        else:
            written[key] = (change.obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION], time.monotonic())


def _hash(obj: dict) -> str | None:
    return (obj.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _trim(body, *paths: tuple[str, ...]) -> dict:
    """A plain copy of just the fields at `paths`, so the indices hold little."""
    result: dict = {}
    for path in paths:
        value = body
        for key in path:
            value = value.get(key) if hasattr(value, "get") else None
        if value is None:
            continue
        target = result
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = _plain(value)
    return result


def _plain(value):
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
