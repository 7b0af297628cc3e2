"""Building an image on the cluster: skip when the registry holds this context, else upload, run, stream.

One path for `build-image` and `run`:
1. the context is read locally (`buildcontext`: `.dockerignore` applied, size limit, digest) —
   bad input ends here, before any connection;
2. the registry is asked for NAME:TAG; it is kept only when its context-digest label is this
   context's digest (a colleague's image of the same name, or an older Dockerfile, is rebuilt);
3. the context goes to this build's own folder of the shared volume, exactly (a delta transfer
   that also removes files no longer in the context);
4. the BuildKit Job of `buildjob` runs in clusterous-system; the pod of *this* Job (by uid) is
   followed and its log streamed; a failure is named for what it is (unschedulable, image pull
   refused, Docker Hub's rate limit, out of memory, evicted, deadline) with the log's last lines;
5. the result is the image's digest, which `run` deploys (`name@sha256:...`), so a node never
   runs an older image cached under the same tag.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clusterous_cli import buildcontext, buildjob
from clusterous_core.errors import Failure
from clusterous_operator.images import LEGACY_REGISTRY, resolve_image
from clusterous_provisioner.kubecalls import watch_objects

TAIL_LINES = 25
START_TIMEOUT = 600.0  # pulling BuildKit and mounting the volume, on a fresh node
JOB_CHECK_SECONDS = 10.0  # while waiting for the pod, how often the Job itself is looked at
PULL_REASONS = {"ErrImagePull", "ImagePullBackOff"}
STUCK_REASONS = PULL_REASONS | {"CreateContainerConfigError", "CreateContainerError", "InvalidImageName"}
DOCKER_HUB_LIMIT = (
    "Docker Hub refused the pull: 429 toomanyrequests, its pull rate limit for the cluster's one NAT address"
)
DOCKER_HUB_HINT = (
    "wait for the limit to reset (Docker Hub counts pulls per address over 6 hours), or base the "
    "image on one from another registry (public.ecr.aws/docker/library/...)"
)


@dataclass(frozen=True)
class Built:
    """The outcome of ensure_built: the image's digest in the registry, and whether it was built."""

    name: str
    tag: str
    digest: str
    built: bool


@dataclass(frozen=True)
class Settings:
    """What a user may change about builds (build-image options)."""

    resources: buildjob.Resources = buildjob.Resources()
    max_context_bytes: int = buildcontext.DEFAULT_MAX_BYTES


def check_context(
    directory: Path, source: str = "DIR", max_bytes: int = buildcontext.DEFAULT_MAX_BYTES
) -> buildcontext.Context:
    """The context as it will be sent; BadInput for a missing folder or Dockerfile, or one too big."""
    return buildcontext.load(Path(directory), source, max_bytes)


def ensure_built(
    conn,
    api,
    context: Path | buildcontext.Context,
    name: str,
    tag: str,
    say: Callable[[str], None],
    force: bool = False,
    settings: Settings = Settings(),
) -> Built:
    """NAME:TAG built from exactly this context: the registry's image when its context digest
    matches (and not force), else a fresh build. Returns its digest."""
    from clusterous_cli import registry

    ctx = (
        context
        if isinstance(context, buildcontext.Context)
        else check_context(context, "DIR", settings.max_context_bytes)
    )
    endpoint = registry.endpoint_from_cluster_info(api)
    reg = registry.Registry(conn, *endpoint)
    digest, label = reg.label(name, tag, buildjob.CONTEXT_DIGEST_LABEL)
    if digest and label == ctx.digest and not force:
        say(f"image {name}:{tag} ({digest}) in the cluster registry was built from this context: not rebuilt")
        return Built(name, tag, digest, False)
    if digest:
        say(f"image {name}:{tag} in the cluster registry was built from another context: rebuilding")
    run_build(conn, api, ctx, name, tag, say, settings, registry_endpoint=":".join(map(str, endpoint)))
    digest, label = reg.label(name, tag, buildjob.CONTEXT_DIGEST_LABEL)
    if not digest or label != ctx.digest:
        raise Failure(
            f"the build of {name}:{tag} succeeded, but the registry's {name}:{tag} is not its image "
            "(another build pushed the same tag meanwhile)",
            "run the command again",
        )
    say(f"{name}:{tag} is {digest}")
    return Built(name, tag, digest, True)


def upload_context(conn, ctx: buildcontext.Context, name: str, tag: str, say: Callable[[str], None]) -> None:
    from clusterous_cli import transfer

    report = transfer.put(conn, ctx.root, buildjob.context_dir(name, tag), only=list(ctx.files), delete=True)
    say(
        f"build context of {name}:{tag}: {len(report.transferred)} file(s) sent, "
        f"{report.unchanged} unchanged, {len(report.deleted)} removed"
    )


def run_build(
    conn,
    api,
    ctx: buildcontext.Context,
    name: str,
    tag: str,
    say: Callable[[str], None],
    settings: Settings = Settings(),
    registry_endpoint: str | None = None,
) -> None:
    """Upload the context, (re)create the Job, follow its pod, stream its log, name any failure."""
    from kubernetes import client

    from clusterous_cli import registry
    from clusterous_cli.kubeapi import api_failure

    upload_context(conn, ctx, name, tag, say)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    job = buildjob.build_job(name, tag, ctx.digest, settings.resources)
    job_name = job["metadata"]["name"]
    try:
        _create_if_missing(lambda: core.create_namespaced_persistent_volume_claim(
            buildjob.NAMESPACE, buildjob.build_context_claim()  # type: ignore[arg-type]  # a dict body is sent as it is
        ))  # fmt: skip
        _apply_config_map(core, buildjob.buildkitd_config_map(registry_endpoint))
        registry.ensure_push_credentials(api, buildjob.PUSH_REGISTRY)  # `up` made it; older clusters
        _delete_previous(batch, job_name)
        created = batch.create_namespaced_job(buildjob.NAMESPACE, job)  # type: ignore[arg-type]  # a dict body is sent as it is
        assert created.metadata is not None and created.metadata.uid is not None  # set by the API server
        uid = created.metadata.uid
    except Failure:
        raise
    except Exception as exc:  # noqa: BLE001 - ApiException, connection errors
        raise api_failure(f"starting the build of {name}:{tag}", exc) from None
    say(f"building {name}:{tag} on the cluster (job {buildjob.NAMESPACE}/{job_name})")
    logs = f"kubectl -n {buildjob.NAMESPACE} logs job/{job_name}"
    pod = _wait_for_pod(core, batch, job_name, uid, settings)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    _stream_log(core, pod, say, tail)
    outcome = _wait_for_job(batch, job_name)
    if outcome == "succeeded":
        say(f"built and pushed {name}:{tag}")
        return
    reason, hint = _failure_reason(core, pod, outcome, tail, ctx, settings)
    log = "\n".join(f"  | {line}" for line in tail) or "  | (no log)"
    raise Failure(
        f"the build of {name}:{tag} failed: {reason}; the end of its log:\n{log}",
        f"{hint} (full log: {logs})",
    )


def _create_if_missing(create) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        create()
    except ApiException as exc:
        if exc.status != 409:
            raise


def _apply_config_map(core, body: dict) -> None:
    from kubernetes.client.exceptions import ApiException

    name = body["metadata"]["name"]
    try:
        core.create_namespaced_config_map(buildjob.NAMESPACE, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_config_map(name, buildjob.NAMESPACE, body)


def _delete_previous(batch, job_name: str) -> None:
    """A Job of the same name is an earlier build of this tag: delete it in the foreground (the Job
    stays until its pods are gone) and wait until it is gone, so no old pod can be mistaken for
    the new build's."""
    from kubernetes.client.exceptions import ApiException

    try:
        batch.delete_namespaced_job(job_name, buildjob.NAMESPACE, propagation_policy="Foreground")
    except ApiException as exc:
        if exc.status != 404:
            raise
        return
    for jobs in watch_objects(
        batch.list_namespaced_job, buildjob.NAMESPACE, field_selector=f"metadata.name={job_name}", timeout=120
    ):
        if job_name not in jobs:
            return
    raise Failure(
        f"the previous build job {buildjob.NAMESPACE}/{job_name} is still being removed after 120 s",
        f"see `kubectl -n {buildjob.NAMESPACE} describe job {job_name}`, then run the command again",
    )


def _owned_by(pod, uid: str) -> bool:
    return any(ref.uid == uid for ref in (pod.metadata.owner_references or []))


def _wait_for_pod(core, batch, job_name: str, uid: str, settings: Settings):
    """The name of this Job's pod (owned by its uid, not terminating) once its container started
    or ended. A pod the scheduler cannot place, or whose image cannot be pulled, fails at once."""
    selector = f"{buildjob.BUILD_LABEL}={job_name}"
    deadline = time.monotonic() + START_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        pod = _watch_for_pod(core, selector, uid, settings, min(left, JOB_CHECK_SECONDS))
        if pod:
            return pod
        ended = _job_failure(batch, job_name)  # e.g. its deadline passed before a pod ran
        if ended:
            raise Failure(
                f"the build job {buildjob.NAMESPACE}/{job_name} failed before its pod ran: {ended}",
                f"see `kubectl -n {buildjob.NAMESPACE} describe job {job_name}`",
            )
    raise Failure(
        f"the build pod of {job_name} did not start within {int(START_TIMEOUT)} s",
        f"see `kubectl -n {buildjob.NAMESPACE} describe job {job_name}`",
    )


def _watch_for_pod(core, selector: str, uid: str, settings: Settings, timeout: float) -> str | None:
    """One stretch of `_wait_for_pod`: the pod's name, or None when `timeout` passed first."""
    for pods in watch_objects(
        core.list_namespaced_pod, buildjob.NAMESPACE, label_selector=selector, timeout=timeout
    ):
        for pod in pods.values():
            if not _owned_by(pod, uid) or pod.metadata.deletion_timestamp:
                continue
            status = pod.status
            if status and status.phase in ("Failed", "Succeeded"):
                return pod.metadata.name
            for cond in (status.conditions or []) if status else []:
                if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                    raise Failure(
                        f"the build pod cannot be scheduled: {cond.message}",
                        f"the build asks for {settings.resources.memory_request} memory, "
                        f"{settings.resources.cpu} CPU and {settings.resources.disk} of disk on one node: "
                        "lower --disk/--memory, or add a larger node (`clusterous-k8s scale`)",
                    )
            for state in (status.container_statuses or []) if status else []:
                if state.state and (state.state.running or state.state.terminated):
                    return pod.metadata.name
                waiting = state.state.waiting if state.state else None
                if waiting and waiting.reason in STUCK_REASONS:
                    message = waiting.message or ""
                    if _rate_limited(message):
                        raise Failure(
                            f"the build pod cannot start: {DOCKER_HUB_LIMIT} ({message})", DOCKER_HUB_HINT
                        )
                    raise Failure(
                        f"the build pod cannot start: {waiting.reason}: {message}".rstrip(": "),
                        "check that the nodes reach the internet (NAT gateway) to pull the BuildKit image",
                    )
    return None


def _job_failure(batch, job_name: str) -> str:
    """'<reason>: <message>' of the Job's Failed condition, or '' while it has none."""
    from kubernetes.client.exceptions import ApiException

    try:
        status = batch.read_namespaced_job(job_name, buildjob.NAMESPACE).status
    except ApiException:
        return ""
    for cond in (status.conditions or []) if status else []:
        if cond.type == "Failed" and cond.status == "True":
            if cond.reason == "DeadlineExceeded":
                return f"it ran past the build deadline of {buildjob.DEADLINE_SECONDS} s (DeadlineExceeded)"
            return f"{cond.reason}: {cond.message or ''}".rstrip(": ")
    return ""


def _rate_limited(text: str) -> bool:
    return "toomanyrequests" in text or "429 Too Many Requests" in text


def _stream_log(core, pod: str, say: Callable[[str], None], tail: deque) -> None:
    response = core.read_namespaced_pod_log(
        pod, buildjob.NAMESPACE, container=buildjob.CONTAINER, follow=True, _preload_content=False
    )
    buffer = b""
    try:
        for chunk in response.stream(4096):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                tail.append(line)
                say(f"  | {line}")
        if buffer:
            tail.append(buffer.decode(errors="replace"))
            say(f"  | {tail[-1]}")
    finally:
        response.release_conn()


def _wait_for_job(batch, job_name: str, timeout: float = 120.0) -> str:
    """'succeeded', or the reason of the Job's Failed condition ('failed' without one); the log
    has ended, so the status follows within seconds."""
    for jobs in watch_objects(
        batch.list_namespaced_job,
        buildjob.NAMESPACE,
        field_selector=f"metadata.name={job_name}",
        timeout=timeout,
    ):
        status = jobs[job_name].status if job_name in jobs else None
        if status and status.succeeded:
            return "succeeded"
        for cond in (status.conditions or []) if status else []:
            if cond.type == "Failed" and cond.status == "True":
                return cond.reason or "failed"
        if status and status.failed:
            return "failed"
    return "failed"


def _failure_reason(core, pod: str, outcome: str, tail: deque, ctx, settings: Settings) -> tuple[str, str]:
    """(what happened, what to do) from the Job's reason, the pod's status and the log."""
    limits = settings.resources
    if outcome == "DeadlineExceeded":
        return (
            f"it ran past the build deadline of {buildjob.DEADLINE_SECONDS} s (DeadlineExceeded)",
            "make the build faster (a .dockerignore, fewer layers) or build parts into a base image",
        )
    try:
        current = core.read_namespaced_pod(pod, buildjob.NAMESPACE)
    except Exception:  # noqa: BLE001 - the pod may be gone (TTL, node lost): judge by the log
        current = None
    status = current.status if current is not None else None
    if status is not None and status.reason == "Evicted":
        return (
            f"the pod was evicted: {status.message or 'Evicted'}",
            f"the build's disk is capped at {limits.disk}: raise it with --disk, or make the image smaller",
        )
    for state in (status.container_statuses or []) if status is not None else []:
        ended = state.state.terminated if state.state else None
        if ended is not None and ended.reason == "OOMKilled":
            return (
                f"it ran out of memory (OOMKilled at its limit of {limits.memory})",
                "raise the limit with --memory, or make the build use less (fewer parallel jobs in RUN)",
            )
    if any(_rate_limited(line) for line in tail):
        return DOCKER_HUB_LIMIT + " (pulling a base image)", DOCKER_HUB_HINT
    return "the Dockerfile's build failed", f"fix the Dockerfile in {ctx.root} and run the command again"


def pin_built_images(clusterapp: dict, built: list[Built]) -> dict:
    """The ClusterApp with every component that runs a just-built image of the cluster registry
    (`registry:5000/NAME[:TAG]`, or its full name) set to `registry:5000/NAME@DIGEST`, so each
    node pulls exactly that image (a tag may move; a digest never does). Other names (a short
    name is Docker Hub's) are left alone."""
    wanted = {resolve_image(f"{LEGACY_REGISTRY}/{b.name}:{b.tag}"): b for b in built}
    components = []
    for component in (clusterapp.get("spec") or {}).get("components") or []:
        image = component.get("image", "")
        last = image.rsplit("/", 1)[-1]
        found = wanted.get(resolve_image(image if ":" in last or "@" in last else f"{image}:latest"))
        pinned = f"{LEGACY_REGISTRY}/{found.name}@{found.digest}" if found else image
        components.append({**component, "image": pinned})
    if not components:
        return clusterapp
    return {**clusterapp, "spec": {**clusterapp["spec"], "components": components}}
