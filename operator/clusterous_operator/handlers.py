"""The kopf handlers: thin. They read kopf's in-memory indices, call `reconcile.decide` and write
only the difference. Run locally with `kopf run -A -m clusterous_operator.handlers`.

A ClusterApp is reconciled when it changes, when one of its Deployments changes (a replica
became ready: dependents start and the status says so at once, not at the next resync), and
again every CLUSTEROUS_RESYNC_SECONDS (default 10): the resync is the debounced watch on Nodes
and Pods, which kopf keeps in indices, so nodes joining or leaving change `auto` replicas
within one interval, however many node events arrive. A reconciliation with nothing changed
makes no API call. Only Warning Events are posted (a phase that needs attention, a failed
delete): an app costs its 5 creates, kopf's finalizer and a status patch per phase.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import kopf

from clusterous_core.names import GROUP, PLURAL, TIME_FORMAT, VERSION
from clusterous_operator import kube
from clusterous_operator.builders import APP_LABEL, SPEC_HASH_ANNOTATION, plan_changes
from clusterous_operator.reconcile import decide, status_changed
from clusterous_operator.schema import Phase

CAPP = (GROUP, VERSION, PLURAL)
RESYNC_SECONDS = float(os.environ.get("CLUSTEROUS_RESYNC_SECONDS", "10"))
FINALIZER = "clusterous.io/finalizer"
RECENT_WRITE_SECONDS = 30.0  # trust our own writes over the indices for this long
# The namespace whose ClusterApps it serves (its RBAC writes only there); unset: every namespace.
APP_NAMESPACE = os.environ.get("CLUSTEROUS_APP_NAMESPACE") or None


def _served(namespace: str | None, **_) -> bool:
    return APP_NAMESPACE is None or namespace == APP_NAMESPACE


@dataclass
class AppState:
    """What the operator remembers of one ClusterApp between reconciliations, whichever
    handler (the app's event, a Deployment's event, the resync) runs them: one at a time."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    status_written: tuple = (None, None)  # (generation, status) of our last status patch
    written: dict = field(default_factory=dict)  # (kind, name) -> (spec hash, monotonic time)


_STATES: dict[str, AppState] = {}  # by the ClusterApp's uid: a new app of the same name starts afresh
_STATES_LOCK = threading.Lock()


def app_state(meta) -> AppState:
    with _STATES_LOCK:
        return _STATES.setdefault(
            meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}", AppState()
        )


class NoDiffBase(kopf.DiffBaseStorage):
    """No last-handled configuration on the object.

    kopf keeps one to tell on.create from on.update handlers and to give them a diff; our only
    change handler is on.delete, which needs neither (every add and edit goes through on.event
    and is compared with the cluster, not with a stored copy). Kept as an annotation, it would
    cost one more write per new ClusterApp and one more reconciliation of its event. Nothing
    is kept, so nothing is built either: kopf would otherwise copy every watched object (child
    Deployments, Pods...) on each of its events to compare it with nothing.
    """

    def build(self, *, body: kopf.Body, extra_fields=None) -> kopf.BodyEssence:
        return {}

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    """Keep kopf's bookkeeping in our own annotations (the status is ours), then log in."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
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


@kopf.index(*CAPP, when=_served)
async def app_index(body: kopf.Body, namespace: str | None, name: str, **_) -> dict:
    """Each ClusterApp as last seen, for the Deployment handler to reconcile it."""
    return {(namespace, name): _trim(body, ("apiVersion",), ("kind",), ("metadata",), ("spec",), ("status",))}


@kopf.index("deployments", labels={APP_LABEL: kopf.PRESENT})
async def deployment_index(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_) -> dict:
    return {
        (namespace, labels[APP_LABEL]): _trim(
            body, ("kind",), ("metadata",), ("spec", "replicas"), ("status",)
        )
    }


@kopf.index("services", labels={APP_LABEL: kopf.PRESENT})
async def service_index(
    namespace: str | None, name: str, labels: kopf.Labels, annotations: kopf.Annotations, **_
) -> dict:
    return {(namespace, labels[APP_LABEL]): ("Service", name, annotations.get(SPEC_HASH_ANNOTATION))}


@kopf.index("persistentvolumeclaims", labels={APP_LABEL: kopf.PRESENT})
async def claim_index(
    namespace: str | None, name: str, labels: kopf.Labels, annotations: kopf.Annotations, **_
) -> dict:
    return {
        (namespace, labels[APP_LABEL]): ("PersistentVolumeClaim", name, annotations.get(SPEC_HASH_ANNOTATION))
    }


def _news(body: kopf.Body, type: str | None, namespace: str | None = None, **_) -> bool:
    """Whether an event of a ClusterApp can change what the app should be (checked in kopf's
    loop, before a thread is taken): not a deletion (on_delete's), not before the finalizer
    (see `reconcile`), not the echo of our own status write with the spec unchanged."""
    meta = body.get("metadata", {})
    if type == "DELETED" or meta.get("deletionTimestamp") or FINALIZER not in (meta.get("finalizers") or []):
        return False
    if not _served(namespace):
        return False
    generation, status = app_state(meta).status_written
    return generation != meta.get("generation") or status_changed(body.get("status"), status)


@kopf.on.event(*CAPP, when=_news)
def on_change(body: kopf.Body, logger, **indices) -> None:
    """Every add or edit of a ClusterApp (and kopf's first listing after a restart) that `_news`
    lets through."""
    reconcile(body, logger, **indices)


_ROLLOUT_KEYS = ("observedGeneration", "replicas", "readyReplicas", "availableReplicas", "updatedReplicas")
_rollouts: dict[str, tuple] = {}  # each child Deployment's last seen rollout state, by uid


@kopf.on.event("deployments", labels={APP_LABEL: kopf.PRESENT})
async def on_deployment(
    body: kopf.Body, type: str | None, namespace: str | None, uid: str, labels: kopf.Labels, logger, **indices
) -> None:
    """A child Deployment's readiness or rollout changed (or it went): reconcile its ClusterApp
    now, so dependents start and the status turns Running within a moment of the last replica
    becoming ready, not at the next resync. Checked here in kopf's loop, once per event: our
    own creates and spec writes (no status change) take no thread."""
    status = body.get("status") or {}
    now = None if type == "DELETED" else tuple(status.get(k) for k in _ROLLOUT_KEYS)
    before = _rollouts.pop(uid, None)
    if now is not None:
        _rollouts[uid] = now
    if now == before or (before is None and not status):
        return
    for app in indices["app_index"].get((namespace, labels[APP_LABEL]), []):
        await asyncio.to_thread(reconcile, app, logger, phase_only=True, **indices)


@kopf.timer(*CAPP, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, when=_served)
def resync(body: kopf.Body, logger, **indices) -> None:
    """Follow what changed around the app: nodes, pods."""
    reconcile(body, logger, **indices)


# ClusterApps are namespaced: kopf's `namespace: str | None` is always a str here
@kopf.on.delete(*CAPP, when=_served)  # type: ignore[arg-type]
def on_delete(body: kopf.Body, namespace: str, name: str, uid: str, logger, **_) -> None:
    """Delete the children explicitly (there may be no garbage collector); never hold the
    finalizer: what could not be deleted is reported as a warning Event."""
    with _STATES_LOCK:
        _STATES.pop(uid, None)
    deleted, failed = kube.delete_children(namespace, name)
    if deleted:
        logger.info("deleted %s", ", ".join(deleted))
    if failed:
        kopf.warn(body, reason="DeleteFailed", message="could not delete: " + "; ".join(failed))


def reconcile(
    body,
    logger,
    phase_only: bool = False,
    *,
    node_index: kopf.Index,
    pod_index: kopf.Index,
    deployment_index: kopf.Index,
    service_index: kopf.Index,
    claim_index: kopf.Index,
    **_,
) -> None:
    """Decide, then write the child changes and the status only where they differ; one
    reconciliation of an app at a time. With `phase_only` (a Deployment's event) the status is
    written only when the phase changes: progress within a phase waits for the resync, so an
    app reaches Running with 2 status patches however many replicas become ready on the way."""
    state = app_state(body.get("metadata", {}))
    with state.lock:
        _reconcile(
            body,
            logger,
            state,
            phase_only,
            node_index,
            pod_index,
            deployment_index,
            service_index,
            claim_index,
        )


def _reconcile(
    body, logger, state, phase_only, node_index, pod_index, deployment_index, service_index, claim_index
) -> None:
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
    # The status this app last had: ours when the body is older than our last patch (a
    # Deployment's event may come before the echo of that patch).
    old = body.get("status") or {}
    generation, written = state.status_written
    if written is not None and generation == meta.get("generation"):
        old = written
    deployments = list(deployment_index.get(key, []))
    decision = decide(
        {**body, "status": old}, node_index.get(None, []), pod_index.get(None, []), deployments, now=_now(),
        elastic=kube.elastic_groups(),
    )  # fmt: skip
    if decision.error is None:
        existing = {
            **{(d["kind"], d["metadata"]["name"]): _hash(d) for d in deployments},
            **{(kind, name): digest for kind, name, digest in service_index.get(key, [])},
            **{(kind, name): digest for kind, name, digest in claim_index.get(key, [])},
        }
        changes = plan_changes(decision.children, {**existing, **_recent_writes(state)})
        kopf.adopt([c.obj for c in changes if c.verb != "delete"], owner=body)
        done = kube.apply_changes(changes, key[0])
        _remember_writes(state, changes)
        if done:
            logger.info("%s", "; ".join(done))
    if phase_only and old.get("phase") == decision.status["phase"]:
        return
    if status_changed(old, decision.status):
        kube.patch_status(key[0], key[1], decision.status)
        state.status_written = (meta.get("generation"), decision.status)
        phase = decision.status["phase"]
        if old.get("phase") != phase and phase in (Phase.FAILED, Phase.DEGRADED, Phase.PENDING):
            kopf.warn(dict(body), reason=phase, message=decision.status["message"])


def _recent_writes(state: AppState) -> dict:
    """What we wrote a moment ago: the indices learn it only when the watch event arrives."""
    now = time.monotonic()
    return {key: digest for key, (digest, at) in state.written.items() if now - at < RECENT_WRITE_SECONDS}


def _remember_writes(state: AppState, changes) -> None:
    written = state.written
    for change in changes:
        key = (change.obj["kind"], change.obj["metadata"]["name"])
        if change.verb == "delete":
            written.pop(key, None)
        else:
            written[key] = (change.obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION], time.monotonic())


def _hash(obj: dict) -> str | None:
    return (obj.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime(TIME_FORMAT)


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
