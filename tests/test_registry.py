"""The cluster registry for real: CNCF distribution (Debian's docker-registry 2.8, standing in for
the cluster's 3.1.1) configured from the rendered registry add-on, storing into the moto server's
S3: its readiness and delete settings, and `images` and `build-image`'s skip-if-present check
reading it the way the product reaches it.

What stands in for what (docs/testing.md, "Registry"):
- the registry runs the rendered manifest's REGISTRY_* settings; only its addresses (free ports
  instead of <controller_ip>:5000 and the loopback debug port 5001), the S3 endpoint (moto) and
  the credentials (environment instead of the instance profile) come from the test;
- the controller is the harness sshd and the Kubernetes API the emulator, as in test_run_quit.py;
  the CLI reads the rendered cluster-info ConfigMap (registryEndpoint = 127.0.0.1:<registry
  port>, where the controller would have <controller_ip>:5000) and sends every registry request
  through a direct-tcpip channel of its SSH connection to the controller (one test checks
  that each connection to the registry comes from the sshd process);
- images are pushed by the test through the registry's v2 API (tests/registry_support.py);
- nothing can run BuildKit here: the emulator's Job controller, scheduler and kubelet run the
  Job, and the BuildKit image's "program" (tests/harness/k8s_controllers.py `World.programs`)
  prints a log and pushes what `buildctl` would push according to the Job's own arguments (the
  image with the labels it was told, the cache tag). What a build uses (`World.uses`) and which
  images Docker Hub refuses (`World.rate_limited`) are set by the test; the emulator turns them
  into OOMKilled, an eviction or ErrImagePull as the kubelet would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from clusterous_cli import buildcontext, buildjob, tunnels
from clusterous_cli.builds import TAIL_LINES
from clusterous_cli.registry import PUSH_USER, push_secrets
from clusterous_operator.images import CLUSTER_REGISTRY
from tests.addons_support import apply_storage_classes
from tests.registry_support import (
    PushedImage,
    cluster_inputs,
    make_registry,
    push_image,
    push_index,
    registry_fixture,  # noqa: F401 - the `registry` fixture
    rendered_addon,
    running_registry,
)
from tests.ssh_support import make_controller, splice, write_k3s_yaml


def blob_key(root: str, digest: str) -> str:
    """Where distribution's storage layout keeps a blob's bytes."""
    hexdigest = digest.removeprefix("sha256:")
    return f"{root.strip('/')}/docker/registry/v2/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"


def test_the_rendered_registry_config_serves_the_v2_api_and_stores_in_s3_under_its_root(registry) -> None:
    assert registry.rendered_env["REGISTRY_STORAGE"] == "s3"
    image = push_image(registry.push_url, "lab/sim", "1.0")

    keys = registry.stored_keys()
    root = registry.root_directory.strip("/") + "/"
    assert keys and all(key.startswith(root) for key in keys), keys
    for digest, data in ((image.config_digest, image.config), (image.layer_digest, image.layer)):
        stored = registry.s3.get_object(Bucket=registry.bucket, Key=blob_key(registry.root_directory, digest))
        assert stored["Body"].read() == data
        assert stored["ServerSideEncryption"] == "AES256"  # REGISTRY_STORAGE_S3_ENCRYPT
    assert any(key.endswith("/repositories/lab/sim/_manifests/tags/1.0/current/link") for key in keys)

    # The pushed image reads back through the API (REGISTRY_STORAGE=s3 replaced the base config's
    # filesystem storage, so it is served from S3).
    request = urllib.request.Request(
        f"{registry.url}/v2/lab/sim/manifests/1.0", headers={"Accept": image.media_type}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Docker-Content-Digest"] == image.digest
        assert json.loads(response.read())["layers"][0]["digest"] == image.layer_digest


def test_images_outlive_the_registry_that_pushed_them(aws, tmp_path) -> None:
    """The bucket, not the registry pod, holds the images: a new cluster's registry sees them."""
    with running_registry(aws, tmp_path / "first") as first:
        image = push_image(first.push_url, "basic-python", "latest")
    with running_registry(aws, tmp_path / "second", create_bucket=False) as second:
        assert second.bucket == first.bucket
        with urllib.request.urlopen(f"{second.url}/v2/basic-python/tags/list", timeout=10) as response:
            assert json.loads(response.read())["tags"] == [image.tag]


def status_of(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def registry_container(server) -> dict:
    """The registry container of the rendered Deployment this server was configured from."""
    deployment = rendered_addon(cluster_inputs(server.region), "registry.yaml", "Deployment", "registry")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_readiness_fails_while_the_registry_cannot_use_s3(aws, tmp_path) -> None:
    """A registry without AWS credentials (what distribution 2.8's SDK got from a controller that
    requires IMDSv2: NoCredentialProviders) starts and answers GET /v2/ at first; the kubelet's
    first readiness probe, `initialDelaySeconds` after the start, must already see the storage
    health check fail. A registry with credentials is ready then, and both stay alive."""
    no_credentials = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
    }
    able = make_registry(aws, tmp_path / "able")
    blind = make_registry(aws, tmp_path / "blind", create_bucket=False, **no_credentials)
    container = registry_container(blind)
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[readiness["httpGet"]["port"]] == 5000  # the registry's own port (REGISTRY_HTTP_ADDR)
    try:
        able.start()
        started = time.monotonic()  # the kubelet counts from the container's start
        blind.start()  # returns once GET /v2/ answers 200: the health check has not failed yet
        time.sleep(max(0.0, started + readiness.get("initialDelaySeconds", 0) - time.monotonic()))
        path = readiness["httpGet"]["path"]
        assert status_of(blind.url + path) == 503, blind.log_text()[-3000:]
        assert status_of(f"{blind.url}/v2/") == 503  # pulls fail at once, saying why
        health = f"http://127.0.0.1:{blind.debug_port}/debug/health"  # the controller's loopback
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(health, timeout=10)
        assert failed.value.code == 503
        assert "NoCredentialProviders" in json.loads(failed.value.read())["storagedriver_s3"]
        assert status_of(able.url + path) == 200
        for server in (able, blind):  # liveness does not depend on S3: nothing restarts in vain
            with socket.create_connection((server.host, server.port), timeout=5):
                pass
        assert set(liveness) & {"tcpSocket", "httpGet", "exec"} == {"tcpSocket"}
    finally:
        able.stop()
        blind.stop()


def test_nothing_can_delete_an_image(registry) -> None:
    """Delete is off: neither a manifest nor a tag can be deleted, and the image still pulls."""
    image = push_image(registry.push_url, "lab/sim", "1.0")
    for reference in (image.digest, image.tag):
        assert status_of(f"{registry.url}/v2/lab/sim/manifests/{reference}", "DELETE") == 405
    accept = {"Accept": image.media_type}
    assert status_of(f"{registry.url}/v2/lab/sim/manifests/1.0", headers=accept) == 200
    assert status_of(f"{registry.url}/v2/lab/sim/blobs/{image.layer_digest}", "DELETE") == 405


# -- the CLI, through the SSH connection to the controller -----------------------------------


def k3s_yaml(sshd):
    """The stand-in k3s.yaml the CLI fetches from the controller over SFTP."""
    return write_k3s_yaml(sshd.workdir / "k3s.yaml")


@pytest.fixture
def cluster(sshd, k8s_api, registry):
    """The harness controller, the API emulator behind it, and cluster-info naming the registry."""
    made = make_controller(sshd, api_port=urlsplit(k8s_api.url).port, k3s_kubeconfig=str(k3s_yaml(sshd)))
    k8s_api.create("v1/namespaces", {"metadata": {"name": buildjob.NAMESPACE}})
    k8s_api.create("v1/configmaps", registry.cluster_info, namespace=buildjob.NAMESPACE)
    apply_storage_classes(k8s_api)  # the build context's claim binds through clusterous-shared
    k8s_api.add_node("worker-1", labels={"clusterous.io/group": "worker"}, cpu="2")
    # nodes pull the cluster's images from this registry (containerd's mirror of registry:5000)
    k8s_api.world.registry = (f"{CLUSTER_REGISTRY}/", registry.has_image)
    # what `up` made over the API for this push endpoint (registry.ensure_push_credentials)
    for secret in push_secrets(registry.push.password, buildjob.PUSH_REGISTRY):
        k8s_api.create("v1/secrets", secret, namespace=buildjob.NAMESPACE)
    try:
        yield made
    finally:
        tunnels.stop_supervisor(made.ref)


def as_listed(image: PushedImage) -> dict:
    return {
        "name": image.name,
        "tag": image.tag,
        "size": image.size,
        "created": image.created,
        "digest": image.digest,
    }


def test_images_lists_names_tags_sizes_and_dates_through_the_ssh_connection(cluster, registry, cli) -> None:
    pushed = [
        push_image(registry.push_url, "basic-python", "latest", created="2025-03-07T09:05:01Z"),
        push_image(
            registry.push_url, "basic-python", "1.0", files={"a": b"x" * 5000}, created="2025-01-02T03:04:05Z"
        ),
        push_image(registry.push_url, "lab/dask", "2024.1", oci=True, created="2024-12-24T18:00:00Z"),
    ]
    result = cli(["images", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert sorted(listed, key=lambda i: (i["name"], i["tag"])) == sorted(
        (as_listed(i) for i in pushed), key=lambda i: (i["name"], i["tag"])
    )
    # The real registry answered: its access log has the catalogue and manifest reads.
    assert '"GET /v2/_catalog HTTP/1.1" 200' in registry.log_text()
    assert '"GET /v2/lab/dask/manifests/2024.1 HTTP/1.1" 200' in registry.log_text()

    table = cli(["images"])
    assert table.exit_code == 0, table.output
    for image in pushed:
        row = next(
            line for line in table.stdout.splitlines() if image.name in line and f" {image.tag} " in line
        )
        assert image.created in row

    only = cli(["images", "basic-python", "--json"])
    assert only.exit_code == 0, only.output
    assert sorted((i["name"], i["tag"]) for i in json.loads(only.stdout)) == [
        ("basic-python", "1.0"),
        ("basic-python", "latest"),
    ]


def test_images_describes_a_multi_platform_index_by_its_first_image(cluster, registry, cli) -> None:
    amd = push_image(registry.push_url, "multi", "amd64", created="2025-02-01T00:00:00Z")
    arm = push_image(registry.push_url, "multi", "arm64", architecture="arm64", files={"b": b"y" * 300})
    digest = push_index(registry.push_url, "multi", "1.0", [amd, arm])
    result = cli(["images", "multi", "--json"])
    assert result.exit_code == 0, result.output
    by_tag = {i["tag"]: i for i in json.loads(result.stdout)}
    assert by_tag["1.0"] == as_listed(amd) | {"tag": "1.0", "digest": digest}


def test_images_of_an_empty_registry_and_of_an_unknown_name(cluster, cli) -> None:
    empty = cli(["images", "--json"])
    assert empty.exit_code == 0, empty.output
    assert json.loads(empty.stdout) == []
    assert "empty" in cli(["images"]).stderr
    unknown = cli(["images", "nothing-here"])
    assert unknown.exit_code == 0, unknown.output
    assert "nothing-here" in unknown.stderr


def test_images_follows_the_registrys_catalog_pages(aws, sshd, k8s_api, tmp_path, cli) -> None:
    """distribution caps a catalog page at catalog.maxentries (1000 by default) and links the
    next page; with a cap of 2 five repositories take three pages."""
    with running_registry(aws, tmp_path / "registry", REGISTRY_CATALOG_MAXENTRIES="2") as small:
        names = [f"img{i}" for i in range(5)]
        for name in names:
            push_image(small.push_url, name, "v1")
        made = make_controller(sshd, api_port=urlsplit(k8s_api.url).port, k3s_kubeconfig=str(k3s_yaml(sshd)))
        k8s_api.create("v1/namespaces", {"metadata": {"name": buildjob.NAMESPACE}})
        k8s_api.create("v1/configmaps", small.cluster_info, namespace=buildjob.NAMESPACE)
        try:
            result = cli(["images", "--json"])
        finally:
            tunnels.stop_supervisor(made.ref)
    assert result.exit_code == 0, result.output
    assert sorted(i["name"] for i in json.loads(result.stdout)) == names
    assert "/v2/_catalog?last=" in small.log_text()  # the registry really served several pages


def process_of_peer(conn: socket.socket) -> str:
    """The command name of the process holding the other end of a loopback TCP connection
    (Linux /proc: the peer's socket inode from /proc/net/tcp, then the process with that fd)."""

    def hexaddr(address) -> str:
        return f"{socket.inet_aton(address[0])[::-1].hex().upper()}:{address[1]:04X}"

    peer, ours = hexaddr(conn.getpeername()), hexaddr(conn.getsockname())
    inode = next(  # both ends must match: an old TIME_WAIT entry may share the peer's port
        fields[9]
        for fields in map(str.split, Path("/proc/net/tcp").read_text().splitlines()[1:])
        if fields[1] == peer and fields[2] == ours
    )
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for fd in _fds(pid):
            with contextlib.suppress(OSError):  # fds come and go while we look
                if os.readlink(fd) == f"socket:[{inode}]":
                    return Path(f"/proc/{pid}/comm").read_text().strip() + (
                        " (the test process)" if int(pid) == os.getpid() else ""
                    )
    return f"no process holds socket {inode}"


def _fds(pid: str) -> list[Path]:
    try:
        return list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone, or not ours to look at
        return []


@contextlib.contextmanager
def recording_relay(target_port: int):
    """A TCP relay to the registry that records which process opened each connection to it."""
    listener = socket.create_server(("127.0.0.1", 0))
    origins: list[str] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                origins.append(process_of_peer(conn))
                upstream = socket.create_connection(("127.0.0.1", target_port))
                splice(conn, upstream)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], origins
    finally:
        listener.close()


def test_registry_requests_travel_through_the_controller(sshd, k8s_api, registry, cli) -> None:
    """registryEndpoint is the controller's address: each request must leave from the controller
    (the harness sshd opening a direct-tcpip channel), never from the laptop."""
    push_image(registry.push_url, "sim", "1")
    made = make_controller(sshd, api_port=urlsplit(k8s_api.url).port, k3s_kubeconfig=str(k3s_yaml(sshd)))
    k8s_api.create("v1/namespaces", {"metadata": {"name": buildjob.NAMESPACE}})
    with recording_relay(registry.port) as (relay_port, origins):
        info = registry.cluster_info | {
            "data": registry.cluster_info["data"] | {"registryEndpoint": f"127.0.0.1:{relay_port}"}
        }
        k8s_api.create("v1/configmaps", info, namespace=buildjob.NAMESPACE)
        try:
            result = cli(["images", "--json"])
        finally:
            tunnels.stop_supervisor(made.ref)
    assert result.exit_code == 0, result.output
    assert [(i["name"], i["tag"]) for i in json.loads(result.stdout)] == [("sim", "1")]
    assert origins and all(origin.startswith("sshd") for origin in origins), origins


# -- build-image: skip only an image of the same context, else build --------------------------


def build_context(tmp_path, name: str = "image"):
    context = tmp_path / name
    context.mkdir()
    (context / "Dockerfile").write_text("FROM python:3.12-slim\nCOPY . /app\nRUN echo built\n")
    (context / "app.py").write_text("print('hello')\n")
    return context


def context_digest(context) -> str:
    return buildcontext.load(context).digest


@pytest.mark.parametrize("oci", [False, True], ids=["docker-schema2", "oci"])
def test_build_image_skips_an_image_built_from_the_same_context(
    cluster, registry, k8s_api, cli, tmp_path, oci
) -> None:
    context = build_context(tmp_path)
    labels = {buildjob.CONTEXT_DIGEST_LABEL: context_digest(context)}
    pushed = push_image(registry.push_url, "sim", "1", oci=oci, labels=labels)
    result = cli(["build-image", str(context), "sim:1"])
    assert result.exit_code == 0, result.output
    assert "sim:1" in result.stderr and "not rebuilt" in result.stderr and pushed.digest in result.stderr
    assert '"HEAD /v2/sim/manifests/1 HTTP/1.1" 200' in registry.log_text()  # asked the real registry
    assert k8s_api.list("batch/v1/jobs", namespace=buildjob.NAMESPACE) == []
    assert k8s_api.list("v1/persistentvolumeclaims", namespace=buildjob.NAMESPACE) == []
    assert list(cluster.shared.iterdir()) == []  # the context was not uploaded


@contextlib.contextmanager
def buildkit_runs(k8s_api, log: str, succeed: bool, on_start=None, seconds: float = 0.0):
    """What the BuildKit image does when it runs (nothing runs BuildKit here): `on_start(pod, container)`
    (e.g. push what BuildKit would push), print the build log, take `seconds`, exit 0 or 1. The
    emulator's Job controller, scheduler and kubelet make the pod and the Job's outcome of it."""

    async def build(emulator, pod, container) -> int:
        if on_start:
            await asyncio.to_thread(on_start, pod, container)
        await emulator.write_pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"], log, None)
        await asyncio.sleep(seconds)
        return 0 if succeed else 1

    program = (re.compile(re.escape(buildjob.BUILDKIT_IMAGE)), build)
    k8s_api.world.programs.append(program)
    try:
        yield
    finally:
        k8s_api.world.programs.remove(program)


def mounted_credential(k8s_api, pod: dict, container: dict, registry_name: str) -> str:
    """user:password for `registry_name` as buildctl finds it: $DOCKER_CONFIG/config.json, here
    the file a Secret volume of the pod puts there (read from the emulator, as the kubelet would)."""
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["DOCKER_CONFIG"])
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == "config.json"]
    secret = k8s_api.get("v1/secrets", volume["secret"]["secretName"], pod["metadata"]["namespace"])
    config = json.loads(base64.b64decode(secret["data"][item["key"]]))
    return base64.b64decode(config["auths"][registry_name]["auth"]).decode()


def pushes_as_buildkit(registry, pushed: list, k8s_api=None) -> callable:
    """What `buildctl build --output=type=image,name=...,push=true --opt=label:...
    --export-cache=type=registry,ref=...` leaves in the registry: the image, labelled as the
    arguments say, and the cache under its own tag, pushed to the push endpoint with the
    credential the pod mounts (given `k8s_api`; else the push endpoint's own)."""

    def push(pod, container) -> None:
        args = container["args"]
        (output,) = [a for a in args if a.startswith("--output=")]
        reference = dict(kv.split("=", 1) for kv in output.removeprefix("--output=").split(","))["name"]
        name, _, tag = reference.removeprefix(f"{buildjob.PUSH_REGISTRY}/").rpartition(":")
        labels = dict(
            a.removeprefix("--opt=label:").split("=", 1) for a in args if a.startswith("--opt=label:")
        )
        (export,) = [a for a in args if a.startswith("--export-cache=")]
        cache = dict(kv.split("=", 1) for kv in export.removeprefix("--export-cache=").split(","))["ref"]
        url = registry.push_url
        if k8s_api is not None:
            credential = mounted_credential(k8s_api, pod, container, buildjob.PUSH_REGISTRY)
            url = f"http://{credential}@{registry.push.host}:{registry.push.port}"
        push_image(url, name, cache.rpartition(":")[2], files={"cache": b"layers"})
        pushed.append(push_image(url, name, tag, labels=labels, files={"app": os.urandom(64)}))

    return push


def test_an_image_of_the_same_tag_from_another_context_is_rebuilt(
    cluster, registry, k8s_api, cli, tmp_path
) -> None:
    """The bucket is shared: a colleague's sim:1 (no label, or another context's) is not ours."""
    context = build_context(tmp_path)
    push_image(registry.push_url, "sim", "1", labels={buildjob.CONTEXT_DIGEST_LABEL: "sha256:" + "0" * 64})
    pushed: list = []
    with buildkit_runs(
        k8s_api, "#1 DONE\n", succeed=True, on_start=pushes_as_buildkit(registry, pushed, k8s_api)
    ):
        result = cli(["build-image", str(context), "sim:1"])
    assert result.exit_code == 0, result.output
    assert "another context: rebuilding" in result.stderr
    assert f"sim:1 is {pushed[0].digest}" in result.stderr


def test_a_missing_tag_is_built_and_a_failed_build_ends_with_its_log_tail(
    cluster, registry, k8s_api, cli, tmp_path
) -> None:
    push_image(registry.push_url, "sim", "1")  # another tag of the same image does not count
    context = build_context(tmp_path)
    log = (
        "\n".join(f"#{i} step {i}" for i in range(40))
        + "\nERROR: process did not complete successfully: exit code: 2\n"
    )
    with buildkit_runs(k8s_api, log, succeed=False):
        result = cli(["build-image", str(context), "sim:2"])
    assert result.exit_code == 1, result.output
    assert '"HEAD /v2/sim/manifests/2 HTTP/1.1" 404' in registry.log_text()

    # The context was uploaded to this build's own folder and the BuildKit Job created for sim:2.
    uploaded = cluster.shared / buildjob.context_dir("sim", "2")
    assert (uploaded / "Dockerfile").read_text() == (context / "Dockerfile").read_text()
    assert (uploaded / "app.py").exists()
    (job,) = k8s_api.list("batch/v1/jobs", namespace=buildjob.NAMESPACE)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == buildjob.buildctl_args("sim", "2", context_digest(context))
    assert k8s_api.get("v1/persistentvolumeclaims", buildjob.CONTEXT_CLAIM, buildjob.NAMESPACE) is not None
    config = k8s_api.get("v1/configmaps", buildjob.BUILDKITD_CONFIG, buildjob.NAMESPACE)
    assert (
        f'[registry."{registry.endpoint}"]' in config["data"]["buildkitd.toml"]
    )  # the controller's name too

    # The log was streamed, and the error ends with its last lines and the command for the rest.
    lines = log.splitlines()
    assert all(f"  | {line}" in result.stderr for line in lines)
    error = result.stderr[result.stderr.index("the build of sim:2 failed") :]
    assert "the Dockerfile's build failed" in error
    assert lines[-1] in error and lines[-TAIL_LINES] in error and lines[-TAIL_LINES - 1] not in error
    assert f"logs job/{job['metadata']['name']}" in error


def test_a_build_is_skipped_until_its_context_changes_and_the_upload_is_exact(
    cluster, registry, k8s_api, cli, tmp_path
) -> None:
    context = build_context(tmp_path)
    (context / "old.txt").write_text("soon deleted\n")
    (context / ".dockerignore").write_text(".git\nsecret.env\n")
    pushed: list = []
    with buildkit_runs(
        k8s_api,
        "#1 DONE\n#2 pushing layers done\n",
        succeed=True,
        on_start=pushes_as_buildkit(registry, pushed, k8s_api),
    ):
        built = cli(["build-image", str(context), "sim:2"])
        assert built.exit_code == 0, built.output
        assert "built and pushed sim:2" in built.stderr and "  | #2 pushing layers done" in built.stderr

        listed = cli(["images", "sim", "--json"])  # the build cache's tag is not an image to list
        assert listed.exit_code == 0, listed.output
        assert json.loads(listed.stdout) == [as_listed(pushed[0])]
        assert '"GET /v2/sim/tags/list HTTP/1.1" 200' in registry.log_text()

        again = cli(["build-image", str(context), "sim:2", "--json"])
        assert again.exit_code == 0, again.output
        assert "not rebuilt" in again.stderr and len(pushed) == 1
        assert json.loads(again.stdout) == {
            "name": "sim",
            "tag": "2",
            "digest": pushed[0].digest,
            "built": False,
        }

        (context / "old.txt").unlink()  # a deleted file, and ignored ones, must not reach the volume
        (context / "secret.env").write_text("TOKEN=x\n")
        (context / ".git").mkdir()
        (context / ".git" / "config").write_text("[core]\n")
        (context / "new.py").write_text("print('new')\n")
        changed = cli(["build-image", str(context), "sim:2", "--json"])
    assert changed.exit_code == 0, changed.output
    assert "rebuilding" in changed.stderr and len(pushed) == 2
    assert json.loads(changed.stdout) == {
        "name": "sim",
        "tag": "2",
        "digest": pushed[1].digest,
        "built": True,
    }
    assert f"sim:2 is {pushed[1].digest}" in changed.stderr
    uploaded = cluster.shared / buildjob.context_dir("sim", "2")
    on_volume = sorted(str(p.relative_to(uploaded)) for p in uploaded.rglob("*") if p.is_file())
    assert on_volume == [".dockerignore", "Dockerfile", "app.py", "new.py"]


def test_a_rerun_follows_its_own_job_not_the_previous_builds_lingering_pod(
    cluster, registry, k8s_api, cli, tmp_path
) -> None:
    """The previous build's pod may still be terminating (a finalizer, a grace period) when the
    same tag is built again: its log and outcome must not be taken for the new build's."""
    context = build_context(tmp_path)
    with buildkit_runs(k8s_api, "OLD BUILD LOG\n", succeed=False):
        first = cli(["build-image", str(context), "sim:3"])
    assert first.exit_code == 1, first.output
    (old_pod,) = k8s_api.list("v1/pods", namespace=buildjob.NAMESPACE)
    k8s_api.patch(  # as the Job controller's tracking finalizer holds a pod until it is accounted
        "v1/pods",
        old_pod["metadata"]["name"],
        {"metadata": {"finalizers": ["batch.kubernetes.io/job-tracking"]}},
        buildjob.NAMESPACE,
    )
    (context / "app.py").write_text("print('fixed')\n")
    pushed: list = []
    with buildkit_runs(
        k8s_api, "NEW BUILD LOG\n", succeed=True, on_start=pushes_as_buildkit(registry, pushed, k8s_api)
    ):
        second = cli(["build-image", str(context), "sim:3"])
    assert second.exit_code == 0, second.output
    assert "NEW BUILD LOG" in second.stderr and "OLD BUILD LOG" not in second.stderr
    lingering = k8s_api.get("v1/pods", old_pod["metadata"]["name"], buildjob.NAMESPACE)
    assert lingering is not None and lingering["metadata"].get("deletionTimestamp")  # it was there all along


DOCKER_HUB_429 = (
    "ERROR: failed to solve: python:3.12-slim: failed to resolve source metadata for "
    "docker.io/library/python:3.12-slim: unexpected status from HEAD request to "
    "https://registry-1.docker.io/v2/library/python/manifests/3.12-slim: 429 Too Many Requests\n"
)


def test_a_build_over_its_memory_limit_is_named_out_of_memory_and_a_higher_limit_builds(
    cluster, registry, k8s_api, cli, tmp_path
) -> None:
    context = build_context(tmp_path)
    k8s_api.world.uses.append((re.compile("buildkit"), {"memory": "5Gi"}))
    with buildkit_runs(k8s_api, "#5 RUN pip install torch\n", succeed=True):
        result = cli(["build-image", str(context), "sim:1"])
    assert result.exit_code == 1, result.output
    assert "out of memory (OOMKilled at its limit of 4Gi)" in result.stderr and "--memory" in result.stderr
    pushed: list = []
    with buildkit_runs(
        k8s_api, "#5 DONE\n", succeed=True, on_start=pushes_as_buildkit(registry, pushed, k8s_api)
    ):
        bigger = cli(["build-image", str(context), "sim:1", "--memory", "8Gi"])
    assert bigger.exit_code == 0, bigger.output
    (job,) = k8s_api.list("batch/v1/jobs", namespace=buildjob.NAMESPACE)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "8Gi"


@pytest.mark.parametrize(
    "world, log, expected",
    [
        (
            {"uses": {"disk": "30Gi"}},
            "#7 exporting layers\n",
            ['evicted: Usage of EmptyDir volume "buildkitd" exceeds the limit "20Gi"', "--disk"],
        ),
        ({"rate_limited": True}, "", ["Docker Hub refused the pull: 429 toomanyrequests", "cannot start"]),
        ({}, DOCKER_HUB_429, ["Docker Hub refused the pull: 429 toomanyrequests", "pulling a base image"]),
        (
            {"node_memory": "256Mi"},
            "",
            ["cannot be scheduled: 0/1 nodes are available: 1 Insufficient memory"],
        ),
        ({"deadline": 1}, "#3 RUN make\n", ["past the build deadline of 1 s (DeadlineExceeded)"]),
    ],
    ids=["evicted", "buildkit-image-429", "base-image-429", "unschedulable", "deadline"],
)
def test_each_build_failure_is_named_for_what_it_is(
    cluster, registry, k8s_api, cli, tmp_path, monkeypatch, world, log, expected
) -> None:
    if "uses" in world:
        k8s_api.world.uses.append((re.compile("buildkit"), world["uses"]))
    if world.get("rate_limited"):
        k8s_api.world.rate_limited.add(buildjob.BUILDKIT_IMAGE)
    if "node_memory" in world:
        node = k8s_api.get("v1/nodes", "worker-1")
        status = node["status"] | {
            "allocatable": node["status"]["allocatable"] | {"memory": world["node_memory"]}
        }
        k8s_api.write_status("v1/nodes", "worker-1", status)
    if "deadline" in world:
        monkeypatch.setattr(buildjob, "DEADLINE_SECONDS", world["deadline"])
    started = time.monotonic()
    with buildkit_runs(k8s_api, log, succeed=False, seconds=30 if "deadline" in world else 0):
        result = cli(["build-image", str(build_context(tmp_path)), "sim:1"])
    assert result.exit_code == 1, result.output
    message = " ".join(result.stderr.split())
    for text in expected:
        assert text in message, message
    assert "fix the Dockerfile" not in message
    assert time.monotonic() - started < 30  # at once, not after the 600 s start timeout


def test_nodes_run_only_images_the_registry_holds(cluster, k8s_api, registry) -> None:
    """The kubelet pulls `registry:5000/...` from the real registry: a pushed image runs, one that
    was never built fails with ErrImagePull until it is pushed."""

    def pod(name: str, image: str) -> dict:
        return {"metadata": {"name": name}, "spec": {"containers": [{"name": "app", "image": image}]}}

    def state(name: str) -> str | None:
        status = (k8s_api.get("v1/pods", name, "default") or {}).get("status") or {}
        for entry in status.get("containerStatuses") or []:
            return (entry["state"].get("waiting") or {}).get("reason") or status.get("phase")
        return None

    push_image(registry.push_url, "sim", "2")
    k8s_api.create("v1/pods", pod("built", f"{CLUSTER_REGISTRY}/sim:2"), "default")
    k8s_api.create("v1/pods", pod("unbuilt", f"{CLUSTER_REGISTRY}/sim:3"), "default")
    assert k8s_api.wait_for(lambda: state("built"), what="the built image's pod") == "Running"
    assert k8s_api.wait_for(lambda: state("unbuilt"), what="the unbuilt image's pod") == "ErrImagePull"
    push_image(registry.push_url, "sim", "3")
    k8s_api.wait_for(lambda: state("unbuilt") == "Running", what="the pod to start once the image is pushed")


def test_run_deploys_the_built_image_by_its_digest(
    cluster, registry, k8s_api, cli, tmp_path, monkeypatch
) -> None:
    """`run` with an `image:` section builds, then the ClusterApp and the Deployment the operator
    makes of it name the image by the digest the registry holds, and the node pulls exactly that."""
    import kopf.testing as kopf_testing
    import yaml

    from tests.test_run_quit import CRD, OPERATOR_ARGS

    monkeypatch.setenv("KUBECONFIG", str(k8s_api.kubeconfig))  # the operator's own access
    k8s_api.create("apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
    k8s_api.add_node("master-1", labels={"clusterous.io/group": "master"}, cpu="2")
    app = tmp_path / "app"
    app.mkdir()
    build_context(app, "image")
    env = {
        "name": "pinned",
        "environment": {
            "image": [{"dockerfile": "image", "image_name": "sim:2"}],
            "components": {"main": {"machine": "master", "image": "registry:5000/sim:2", "cmd": "sleep 1d"}},
        },
    }
    (app / "env.yml").write_text(yaml.safe_dump(env))
    push_image(registry.push_url, "sim", "2")  # an older sim:2 (another context): a node must never run it
    pushed: list = []
    with (
        buildkit_runs(
            k8s_api, "#1 DONE\n", succeed=True, on_start=pushes_as_buildkit(registry, pushed, k8s_api)
        ),
        kopf_testing.KopfRunner(OPERATOR_ARGS, timeout=60) as runner,
    ):
        result = cli(["run", str(app / "env.yml"), "--no-wait"])
        assert result.exit_code == 0, result.output
        (built,) = pushed
        assert (
            k8s_api.get("capp", "pinned")["spec"]["components"][0]["image"]
            == f"registry:5000/sim@{built.digest}"
        )

        def container_image():
            deployment = k8s_api.get("apps/v1/deployments", "pinned-main", "default")
            return deployment and deployment["spec"]["template"]["spec"]["containers"][0]["image"]

        image = k8s_api.wait_for(container_image, timeout=30, what="the operator's Deployment")
        assert image == f"{CLUSTER_REGISTRY}/sim@{built.digest}"

        def running() -> bool:
            pods = k8s_api.list("v1/pods", namespace="default")
            return any((p.get("status") or {}).get("phase") == "Running" for p in pods)

        k8s_api.wait_for(running, timeout=30, what="the pod to pull the pinned image and run")
    assert runner.exception is None, runner.output
    assert f'"HEAD /v2/sim/manifests/{built.digest} HTTP/1.1" 200' in registry.log_text()


# -- who may write (issue 12 item 14) ---------------------------------------------------------


def test_pods_can_only_pull_only_the_build_credential_pushes_and_nothing_deletes(registry) -> None:
    """registry:5000 as rendered serves pulls and refuses every write; the push endpoint needs
    the build credential; deleting is off on both (the bucket is shared)."""
    image = push_image(registry.push_url, "sim", "1")  # with the credential: accepted
    assert registry.has_image(f"{CLUSTER_REGISTRY}/sim@{image.digest}")  # pulled from the read-only one
    assert status_of(f"{registry.url}/v2/sim/blobs/uploads/", "POST", data=b"") == 405
    manifest = f"/v2/sim/manifests/{image.digest}"
    assert status_of(registry.url + manifest, "DELETE") == 405
    assert status_of(f"{registry.push.url}/v2/sim/blobs/uploads/", "POST", data=b"") == 401  # anonymous
    wrong = {"Authorization": "Basic " + base64.b64encode(b"clusterous-build:guess").decode()}
    assert status_of(f"{registry.push.url}/v2/sim/blobs/uploads/", "POST", wrong, b"") == 401
    credential = f"{PUSH_USER}:{registry.push.password}".encode()
    right = {"Authorization": "Basic " + base64.b64encode(credential).decode()}
    assert status_of(registry.push.url + manifest, "DELETE", right) == 405
    assert registry.has_image(f"{CLUSTER_REGISTRY}/sim@{image.digest}")  # still there


def test_the_push_credential_is_made_over_the_api_once_and_never_printed(
    cluster, registry, k8s_api, cli, tmp_path
) -> None:
    """`up` (readiness) and every build call ensure_push_credentials: made once, kept after; the
    htpasswd line checks the password the build Jobs' docker config holds; no rendered manifest
    (what goes into user-data) carries either; a build's output never shows it."""
    import bcrypt
    from kubernetes import config as kube_config

    from clusterous_cli import registry as product_registry
    from clusterous_provisioner.bootstrap import render_manifests
    from tests.registry_support import cluster_inputs

    for name in (product_registry.HTPASSWD_SECRET, product_registry.PUSH_AUTH_SECRET):
        k8s_api.delete("v1/secrets", name, buildjob.NAMESPACE)  # a cluster from before the change
    api = kube_config.new_client_from_config(str(k8s_api.kubeconfig))
    assert product_registry.ensure_push_credentials(api, buildjob.PUSH_REGISTRY) == "created"
    made = {
        n: k8s_api.get("v1/secrets", n, buildjob.NAMESPACE)["data"]
        for n in (product_registry.HTPASSWD_SECRET, product_registry.PUSH_AUTH_SECRET)
    }
    assert product_registry.ensure_push_credentials(api, buildjob.PUSH_REGISTRY) == "unchanged"
    for name, data in made.items():
        assert k8s_api.get("v1/secrets", name, buildjob.NAMESPACE)["data"] == data
    config = json.loads(base64.b64decode(made[product_registry.PUSH_AUTH_SECRET][".dockerconfigjson"]))
    user, password = base64.b64decode(config["auths"][buildjob.PUSH_REGISTRY]["auth"]).decode().split(":", 1)
    line = base64.b64decode(made[product_registry.HTPASSWD_SECRET]["htpasswd"]).decode().strip()
    assert line.startswith(f"{user}:$2") and bcrypt.checkpw(password.encode(), line.split(":", 1)[1].encode())
    rendered = "\n".join(render_manifests(cluster_inputs("eu-west-1")).values())
    assert password not in rendered and line.split(":", 1)[1] not in rendered
    assert "kind: Secret" not in rendered
    with buildkit_runs(k8s_api, "#1 DONE\n", succeed=False):
        result = cli(["build-image", str(build_context(tmp_path)), "sim:9"])
    assert (
        password not in result.output
        and base64.b64encode(f"{user}:{password}".encode()).decode() not in result.output
    )


def test_the_docker_hub_mirror_pulls_through_once_then_serves_from_s3(registry, aws, tmp_path) -> None:  # noqa: F811
    """registry-mirror as rendered, with the test registry standing in for Docker Hub: the first
    pull goes upstream and lands in the bucket under the mirror's root (inside the controller
    role's prefix); later pulls are served from there, even with the upstream gone. Pushes are
    refused."""
    from tests.registry_support import _request

    image = push_image(registry.push_url, "library/python", "3.12")
    mirror = make_registry(
        aws,
        tmp_path / "mirror",
        create_bucket=False,
        deployment_name="registry-mirror",
        REGISTRY_PROXY_REMOTEURL=registry.url,  # rendered: https://registry-1.docker.io
    )
    assert mirror.rendered_env["REGISTRY_PROXY_REMOTEURL"] == "https://registry-1.docker.io"
    assert mirror.root_directory.startswith(registry.root_directory + "/")
    mirror.start()
    try:
        accept = {"Accept": image.media_type}
        _, headers, _ = _request("GET", f"{mirror.url}/v2/library/python/manifests/3.12", headers=accept)
        assert headers["Docker-Content-Digest"] == image.digest
        _, _, layer = _request("GET", f"{mirror.url}/v2/library/python/blobs/{image.layer_digest}")
        assert layer == image.layer
        cached = blob_key(mirror.root_directory, image.layer_digest)
        deadline = time.monotonic() + 30  # the proxy stores what it streamed once it has it all
        while cached not in mirror.stored_keys():
            assert time.monotonic() < deadline, mirror.log_text()[-2000:]
            time.sleep(0.2)

        registry.push.stop()
        registry.stop()  # Docker Hub unreachable now
        _, headers, _ = _request(
            "GET", f"{mirror.url}/v2/library/python/manifests/{image.digest}", headers=accept
        )
        assert headers["Docker-Content-Digest"] == image.digest
        _, _, again = _request("GET", f"{mirror.url}/v2/library/python/blobs/{image.layer_digest}")
        assert again == image.layer
        with pytest.raises(AssertionError, match=": 405 "):
            push_image(mirror.url, "library/evil", "1")
    finally:
        mirror.stop()
