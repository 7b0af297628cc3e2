"""A real image registry for the tests: Debian's `docker-registry` (CNCF distribution 2.8; the
cluster runs 3.x, which no package registry here ships) on 127.0.0.1, configured exactly as the
cluster's registry add-on, storing into the moto server's S3.

    registry                 fixture (import `registry_fixture`): a RegistryServer, started per test (the `aws` fixture resets moto):
                             the read-only `registry` pods pull from, and `.push` (`registry-push`, htpasswd) where
                             builds push; `.push_url` carries the credential (http://user:password@host:port)
    push_image(url, ...)     a tiny but valid image (config blob, one gzip'd tar layer, a schema2 or
                             OCI manifest) pushed through the registry's v2 API, as any client pushes
    push_index(url, ...)     a multi-platform index over images already pushed

How the configuration is made (docs/testing.md, "Registry"):
- the base file is the cluster image's own /etc/distribution/config.yml (BASE_CONFIG), less its
  `storage.tag` section, which 2.8 cannot parse (the manifest's REGISTRY_STORAGE=s3 drops it on
  the cluster anyway);
- every `REGISTRY_*` variable of the registry container in `manifests/registry.yaml`, rendered by
  `bootstrap.render_manifests` with this test's cluster values, is passed unchanged (s3 driver,
  the bucket's region, bucket, root directory, encryption, redirect off, delete off, storage
  health check, log level) — except the two addresses: `REGISTRY_HTTP_ADDR` (the controller's
  port 5000) and `REGISTRY_HTTP_DEBUG_ADDR` (its loopback port 5001) become free ports here;
- what the cluster gets from its surroundings is supplied here: the S3 endpoint is moto
  (`REGISTRY_STORAGE_S3_REGIONENDPOINT`, plain HTTP so `..._SECURE=false`, path-style requests
  `..._FORCEPATHSTYLE=true`, which 3.x needs with an endpoint and 2.8 does by itself), and the
  credentials come from the AWS SDK's default chain (environment variables here, the instance
  profile on the controller). Nothing else of the test process's AWS_* environment reaches the
  registry (AWS_CA_BUNDLE makes aws-sdk-go panic).

A missing binary skips the tests on a developer's machine and fails them in CI (.ci/run
installs the `docker-registry` package).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from clusterous_cli import buildjob, registry
from clusterous_provisioner.bootstrap import BootstrapInputs, render_manifests
from tests.harness.tools import missing

BINARY = "docker-registry"
# The registry:3 image's /etc/distribution/config.yml (distribution-library-image's
# config-example.yml), which the pod runs with, less `storage.tag: {concurrencylimit: 5}` (2.8
# refuses it as a second storage driver). The manifest's REGISTRY_* variables override it
# (REGISTRY_STORAGE=s3 replaces the whole storage section: filesystem, cache and delete).
BASE_CONFIG = """\
version: 0.1
log:
  level: debug
  fields:
    service: registry
    environment: development
storage:
    delete:
      enabled: true
    cache:
        blobdescriptor: inmemory
    filesystem:
        rootdirectory: /var/lib/registry
http:
    addr: :5000
    debug:
        addr: :5001
        prometheus:
            enabled: true
            path: /metrics
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""
START_TIMEOUT = 15.0
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def cluster_inputs(region: str, controller_ip: str = "127.0.0.1") -> BootstrapInputs:
    """A cluster's values for rendering the add-ons; the controller is this machine."""
    return BootstrapInputs(
        cluster_name="lab",
        region=region,
        k3s_version="v1.33.5+k3s1",
        agent_token="t" * 48,
        controller_ip=controller_ip,
        vpc_cidr="10.42.0.0/16",
        shared_volume_id=None,
        bucket=f"clusterous-123456789012-{region}",
        node_groups=["master", "worker"],
        bucket_region=region,
    )


def rendered_addon(inputs: BootstrapInputs, file: str, kind: str, name: str) -> dict:
    """One object of a rendered add-on manifest."""
    docs = [d for d in yaml.safe_load_all(render_manifests(inputs)[file]) if d]
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def registry_env(inputs: BootstrapInputs, deployment_name: str = "registry") -> dict[str, str]:
    """The REGISTRY_* variables of a rendered registry Deployment's container (`registry`, the
    read-only one pods pull from, or `registry-push`, where builds push)."""
    deployment = rendered_addon(inputs, "registry.yaml", "Deployment", deployment_name)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("REGISTRY_")}


@dataclass
class RegistryServer:
    host: str
    port: int
    region: str
    bucket: str
    debug_port: int  # REGISTRY_HTTP_DEBUG_ADDR's port (/debug/health), on the rendered host
    root_directory: str  # REGISTRY_STORAGE_S3_ROOTDIRECTORY as rendered, e.g. /clusterous/registry
    rendered_env: dict[str, str]  # what the manifest sets
    env: dict[str, str]  # what the process got (rendered + endpoint + credentials)
    cluster_info: dict  # the rendered cluster-info ConfigMap, registryEndpoint pointing here
    s3: object  # a boto3 S3 client on moto
    workdir: Path
    process: subprocess.Popen | None = field(default=None, repr=False)
    push: RegistryServer | None = None  # the push endpoint on the same bucket (registry-push)
    password: str = ""  # the push credential (registry.push_secrets made its Secrets)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def push_url(self) -> str:
        """Where a build pushes: the push endpoint, with the build Jobs' credential in the URL."""
        assert self.push is not None, "this registry has no push endpoint"
        return f"http://{registry.PUSH_USER}:{self.push.password}@{self.push.host}:{self.push.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def has_image(self, image: str) -> bool:
        """Whether `registry:5000/NAME[:TAG|@DIGEST]` would pull: the manifest answers a HEAD
        (what a node's containerd asks through its mirror)."""
        reference = image.split("/", 1)[1]
        name, at, digest = reference.partition("@")
        if not at:
            name, _, digest = reference.partition(":")
        request = urllib.request.Request(
            f"{self.url}/v2/{name}/manifests/{digest or 'latest'}",
            method="HEAD",
            headers={"Accept": ", ".join((DOCKER_MANIFEST, OCI_MANIFEST, OCI_INDEX))},
        )
        try:
            with urllib.request.urlopen(request, timeout=5):
                return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stored_keys(self) -> list[str]:
        """Every object key in the bucket (paginated)."""
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def start(self) -> None:
        config = self.workdir / "config.yml"
        config.write_text(BASE_CONFIG)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [shutil.which(BINARY) or BINARY, "serve", str(config)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"docker-registry exited with {self.process.returncode}:\n{self.log_text()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, asking for credentials (REGISTRY_AUTH=htpasswd)
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(
            f"docker-registry did not answer GET /v2/ within {START_TIMEOUT} s:\n{self.log_text()[-4000:]}"
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_registry(
    aws,
    workdir: Path,
    region: str = "eu-west-1",
    create_bucket: bool = True,
    deployment_name: str = "registry",
    **extra_env: str,
) -> RegistryServer:
    """A registry configured from the rendered add-on, its bucket created in moto (not started).
    For `registry-push`, the htpasswd file is what the kubelet mounts from the Secret that
    `registry.push_secrets` makes, with a fresh password."""
    if not shutil.which(BINARY):
        missing(f"{BINARY} (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = cluster_inputs(region)
    rendered = registry_env(inputs, deployment_name)
    password = ""
    if rendered.get("REGISTRY_AUTH") == "htpasswd":
        password = secrets.token_urlsafe(16)
        htpasswd_secret = registry.push_secrets(password, buildjob.PUSH_REGISTRY)[0]
        htpasswd = workdir / "htpasswd"
        htpasswd.write_bytes(base64.b64decode(htpasswd_secret["data"]["htpasswd"]))
        extra_env = {"REGISTRY_AUTH_HTPASSWD_PATH": str(htpasswd), **extra_env}  # rendered: /auth/htpasswd
    port = debug_port = free_port()
    while debug_port == port:
        debug_port = free_port()
    debug_host = rendered["REGISTRY_HTTP_DEBUG_ADDR"].rpartition(":")[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "AWS_"))}
    env |= rendered
    env |= {
        "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",  # rendered: <controller_ip>:5000
        "REGISTRY_HTTP_DEBUG_ADDR": f"{debug_host}:{debug_port}",  # rendered: 127.0.0.1:5001
        "REGISTRY_STORAGE_S3_REGIONENDPOINT": aws.url,
        "REGISTRY_STORAGE_S3_SECURE": "false",
        "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true",
        "AWS_EC2_METADATA_DISABLED": "true",
        **CREDENTIALS,
        **extra_env,
    }
    info = rendered_addon(inputs, "cluster-info.yaml", "ConfigMap", "cluster-info")
    info["data"]["registryEndpoint"] = f"127.0.0.1:{port}"  # rendered: <controller_ip>:5000
    s3 = aws.client("s3", region)
    bucket = rendered["REGISTRY_STORAGE_S3_BUCKET"]
    if create_bucket:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    return RegistryServer(
        host="127.0.0.1",
        port=port,
        region=region,
        bucket=bucket,
        debug_port=debug_port,
        root_directory=rendered["REGISTRY_STORAGE_S3_ROOTDIRECTORY"],
        rendered_env=rendered,
        env=env,
        cluster_info=info,
        s3=s3,
        workdir=workdir,
        password=password,
    )


@contextlib.contextmanager
def running_registry(
    aws, workdir: Path, create_bucket: bool = True, **extra_env: str
) -> Iterator[RegistryServer]:
    """The read-only registry pods pull from, with its push endpoint (`.push`, `.push_url`) on the
    same bucket, both as the add-on renders them."""
    server = make_registry(aws, workdir, create_bucket=create_bucket, **extra_env)
    server.push = make_registry(
        aws, workdir / "push", create_bucket=False, deployment_name="registry-push", **extra_env
    )
    server.start()
    server.push.start()
    try:
        yield server
    finally:
        server.push.stop()
        server.stop()


@pytest.fixture(name="registry")
def registry_fixture(aws, tmp_path) -> Iterator[RegistryServer]:
    """The cluster's registry configuration, running on 127.0.0.1 and storing into moto's S3."""
    with running_registry(aws, tmp_path / "registry") as server:
        yield server


# -- pushing test images through the v2 API -------------------------------------------------


@dataclass(frozen=True)
class PushedImage:
    name: str
    tag: str
    digest: str  # the manifest's digest (Docker-Content-Digest)
    media_type: str
    config_digest: str
    layer_digest: str
    size: int  # config + layer, compressed: what a node pulls
    created: str
    config: bytes
    layer: bytes


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _request(method: str, url: str, data: bytes | None = None, headers: dict | None = None):
    """One HTTP request; credentials in the URL (http://user:password@host/...) go as Basic auth."""
    parts = urllib.parse.urlsplit(url)
    headers = dict(headers or {})
    if parts.username:
        token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        url = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} {url}: {exc.code} {exc.read()[:500]!r}") from None


def push_blob(url: str, name: str, data: bytes) -> str:
    """Monolithic upload: POST /v2/<name>/blobs/uploads/, then PUT <Location>?digest=..."""
    digest = _digest(data)
    status, headers, _ = _request("POST", f"{url}/v2/{name}/blobs/uploads/", b"")
    assert status == 202, status
    location = headers["Location"]
    if location.startswith("/"):
        location = url + location
    elif "@" in url:  # an absolute Location has no credentials: keep those of `url`
        location = (
            url.split("//", 1)[0]
            + "//"
            + url.split("//", 1)[1].split("@", 1)[0]
            + "@"
            + location.split("//", 1)[1]
        )
    separator = "&" if "?" in location else "?"
    status, headers, _ = _request(
        "PUT",
        f"{location}{separator}digest={digest}",
        data,
        {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )
    assert status == 201 and headers["Docker-Content-Digest"] == digest, (status, dict(headers))
    return digest


def layer_tarball(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(gzip'd tar, plain tar) of `files`, reproducible bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(content), 0, 0o644
            tar.addfile(info, io.BytesIO(content))
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), plain


def push_image(
    url: str,
    name: str,
    tag: str,
    files: dict[str, bytes] | None = None,
    created: str = "2025-03-07T09:05:01Z",
    oci: bool = False,
    architecture: str = "amd64",
    labels: dict[str, str] | None = None,
) -> PushedImage:
    """A valid single-layer image: config blob, layer blob, then the manifest under `tag`."""
    layer, plain = layer_tarball(files or {"hello.txt": f"{name}:{tag}\n".encode()})
    config = json.dumps(
        {
            "architecture": architecture,
            "os": "linux",
            "created": created,
            "config": {"Cmd": ["/bin/sh"], "Labels": labels or {}},
            "rootfs": {"type": "layers", "diff_ids": [_digest(plain)]},
            "history": [{"created": created, "created_by": "tests/registry_support.py"}],
        },
        sort_keys=True,
    ).encode()
    config_digest = push_blob(url, name, config)
    layer_digest = push_blob(url, name, layer)
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                "size": len(config),
                "digest": config_digest,
            },
            "layers": [
                {"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "size": len(layer), "digest": layer_digest}
            ],
        }
    ).encode()
    digest = put_manifest(url, name, tag, manifest, media_type)
    return PushedImage(
        name,
        tag,
        digest,
        media_type,
        config_digest,
        layer_digest,
        len(config) + len(layer),
        created,
        config,
        layer,
    )


def put_manifest(url: str, name: str, reference: str, manifest: bytes, media_type: str) -> str:
    status, headers, _ = _request(
        "PUT", f"{url}/v2/{name}/manifests/{reference}", manifest, {"Content-Type": media_type}
    )
    assert status == 201 and headers["Docker-Content-Digest"] == _digest(manifest), (status, dict(headers))
    return _digest(manifest)


def push_index(url: str, name: str, tag: str, images: list[PushedImage]) -> str:
    """An OCI image index (multi-platform) over images already pushed to `name`."""
    entries = []
    for image in images:
        _, _, body = _request(
            "GET", f"{url}/v2/{name}/manifests/{image.digest}", headers={"Accept": image.media_type}
        )
        architecture = json.loads(image.config)["architecture"]
        entries.append(
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": len(body),
                "platform": {"architecture": architecture, "os": "linux"},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return put_manifest(url, name, tag, index, OCI_INDEX)
