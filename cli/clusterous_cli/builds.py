"""Building an image on the cluster: skip if the registry has the tag, else upload, run, stream.

One path for `build-image` and `run`: the context folder goes to the shared volume with a delta
transfer (a rebuild sends only what changed), the BuildKit Job of `buildjob` runs in
clusterous-system, its log is streamed to the terminal line by line, and a failed build ends
with the log's last lines in the error, so the reason is on screen even when scrolled away.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path

from clusterous_cli import buildjob
from clusterous_cli.kubeapi import watch_objects
from clusterous_provisioner.errors import BadInput, Failure

TAIL_LINES = 25
START_TIMEOUT = 600.0  # pulling BuildKit and mounting the volume, on a fresh node
STUCK_REASONS = {"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "CreateContainerError"}


def check_context(directory: Path, source: str = "DIR") -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInput(source, None, "an existing folder holding a Dockerfile", str(directory))
    if not (directory / "Dockerfile").is_file():
        raise BadInput(source, None, f"a folder holding a Dockerfile (none in {directory})", str(directory))
    return directory


def ensure_built(
    conn, api, context: Path, name: str, tag: str, say: Callable[[str], None], force: bool = False
) -> str:
    """'present' when the registry has name:tag (and not force), else build it: 'built'."""
    from clusterous_cli import registry

    reg = registry.Registry(conn, *registry.endpoint_from_cluster_info(api))
    if not force and reg.has_tag(name, tag):
        say(f"image {name}:{tag} is in the cluster registry: not rebuilt")
        return "present"
    run_build(conn, api, context, name, tag, say)
    return "built"


def upload_context(conn, context: Path, name: str, say: Callable[[str], None]) -> None:
    from clusterous_cli import transfer

    report = transfer.put(conn, context, buildjob.context_dir(name))
    say(f"build context of {name}: {len(report.transferred)} file(s) sent, {report.unchanged} unchanged")


def run_build(conn, api, context: Path, name: str, tag: str, say: Callable[[str], None]) -> None:
    """Upload the context, (re)create the Job, stream its log, and fail with the log's tail."""
    from kubernetes import client

    from clusterous_cli.kubeapi import api_failure

    upload_context(conn, context, name, say)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    job = buildjob.build_job(name, tag)
    job_name = job["metadata"]["name"]
    try:
        _create_if_missing(lambda: core.create_namespaced_persistent_volume_claim(
            buildjob.NAMESPACE, buildjob.build_context_claim()
        ))  # fmt: skip
        _delete_previous(batch, core, job_name)
        batch.create_namespaced_job(buildjob.NAMESPACE, job)
    except Failure:
        raise
    except Exception as exc:  # noqa: BLE001 - ApiException, connection errors
        raise api_failure(f"starting the build of {name}:{tag}", exc) from None
    say(f"building {name}:{tag} on the cluster (job {buildjob.NAMESPACE}/{job_name})")
    pod = _wait_for_pod(core, job_name)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    _stream_log(core, pod, say, tail)
    if not _wait_for_job(batch, job_name):
        log = "\n".join(f"  | {line}" for line in tail) or "  | (no log)"
        raise Failure(
            f"the build of {name}:{tag} failed; the end of its log:\n{log}",
            f"fix the Dockerfile in {context} and run the command again "
            f"(full log: kubectl -n {buildjob.NAMESPACE} logs job/{job_name})",
        )
    say(f"built and pushed {name}:{tag}")


def _create_if_missing(create) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        create()
    except ApiException as exc:
        if exc.status != 409:
            raise


def _delete_previous(batch, core, job_name: str) -> None:
    """A Job of the same name is an earlier build of this tag: remove it and its pods."""
    from kubernetes.client.exceptions import ApiException

    try:
        batch.delete_namespaced_job(job_name, buildjob.NAMESPACE, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise
        return
    for pod in core.list_namespaced_pod(buildjob.NAMESPACE, label_selector=f"job-name={job_name}").items:
        try:
            core.delete_namespaced_pod(pod.metadata.name, buildjob.NAMESPACE)
        except ApiException as exc:
            if exc.status != 404:
                raise
    for jobs in watch_objects(
        batch.list_namespaced_job, buildjob.NAMESPACE, field_selector=f"metadata.name={job_name}", timeout=60
    ):
        if job_name not in jobs:
            return


def _wait_for_pod(core, job_name: str):
    """The Job's pod once its container started (or ended); a pod stuck pulling is a Failure."""
    selector = f"{buildjob.BUILD_LABEL}={job_name}"
    for pods in watch_objects(
        core.list_namespaced_pod, buildjob.NAMESPACE, label_selector=selector, timeout=START_TIMEOUT
    ):
        for pod in pods.values():
            for state in (pod.status.container_statuses or []) if pod.status else []:
                if state.state and (state.state.running or state.state.terminated):
                    return pod.metadata.name
                waiting = state.state.waiting if state.state else None
                if waiting and waiting.reason in STUCK_REASONS:
                    raise Failure(
                        f"the build pod cannot start: {waiting.reason}: {waiting.message or ''}".rstrip(": "),
                        "check that the nodes reach the internet (NAT gateway) to pull the BuildKit image",
                    )
    raise Failure(
        f"the build pod of {job_name} did not start within {int(START_TIMEOUT)} s",
        f"see `kubectl -n {buildjob.NAMESPACE} describe job {job_name}`",
    )


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


def _wait_for_job(batch, job_name: str, timeout: float = 120.0) -> bool:
    """True when the Job succeeded; the log has ended, so its status follows within seconds."""
    for jobs in watch_objects(
        batch.list_namespaced_job,
        buildjob.NAMESPACE,
        field_selector=f"metadata.name={job_name}",
        timeout=timeout,
    ):
        status = jobs[job_name].status if job_name in jobs else None
        if status and status.succeeded:
            return True
        if status and status.failed:
            return False
    return False
