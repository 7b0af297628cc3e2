"""The cluster registry's v2 API (CNCF distribution), reached through the SSH connection.

The registry listens on the controller's private address (hostNetwork, plain HTTP: it never
leaves the VPC), which the cluster-info ConfigMap records as `registryEndpoint`. Each HTTP
request rides a fresh direct-tcpip channel of the controller connection, so nothing listens on
the laptop. Only read calls are made here; builds push from inside the cluster, to the push
endpoint (`registry-push`, htpasswd) with the one credential `ensure_push_credentials` makes:
the registry pods read (`registry:5000`, read-only) and write (`registry-push:5002`) the same
bucket, and nothing deletes.
Build caches (`<name>:buildcache`, see buildjob) are registry tags too; `images` hides them.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass

from clusterous_core.errors import Failure
from clusterous_core.names import CLUSTER_INFO, NAMESPACE

PUSH_USER = "clusterous-build"
HTPASSWD_SECRET = "registry-push-htpasswd"  # mounted by the registry-push pod
PUSH_AUTH_SECRET = "registry-push-auth"  # docker config, mounted by build Jobs only
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
# A HEAD answer has no body, so the reason for an error status is only in the registry's log;
# a 500 usually means the registry cannot reach its S3 bucket.
REGISTRY_LOG_HINT = (
    "see the registry's log: `kubectl -n clusterous-system logs deploy/registry` "
    "(a 5xx usually means it cannot reach its S3 bucket)"
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


@dataclass(frozen=True)
class ImageInfo:
    name: str
    tag: str
    size: int | None  # compressed bytes: config + layers, as pulled
    created: str | None  # the image config's `created` (BuildKit sets it at build, just before the push)
    digest: str | None


def endpoint_from_cluster_info(api) -> tuple[str, int]:
    """(host, port) of the registry as the controller reaches it, from the cluster-info ConfigMap."""
    from kubernetes import client

    from clusterous_cli.kubeapi import api_failure

    namespace, name = NAMESPACE, CLUSTER_INFO
    try:
        data = client.CoreV1Api(api).read_namespaced_config_map(name, namespace).data or {}
    except Exception as exc:  # noqa: BLE001 - ApiException, connection errors
        raise api_failure(f"reading {namespace}/{name} (where the registry is)", exc) from None
    host, _, port = (data.get("registryEndpoint") or "").rpartition(":")
    if not host or not port.isdigit():
        raise Failure(
            f"{namespace}/{name} names no registryEndpoint",
            "re-run `clusterous-k8s up` to restore the add-ons",
        )
    return host, int(port)


class _ChannelHTTPConnection(http.client.HTTPConnection):
    """http.client over an SSH channel instead of a socket."""

    def __init__(self, conn, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ssh = conn

    def connect(self) -> None:
        self.sock = self._ssh.open_tcp(self.host, self.port, timeout=self.timeout)
        self.sock.settimeout(self.timeout)


class Registry:
    """A few v2 calls; `conn` is an ssh.Connection (anything with open_tcp)."""

    def __init__(self, conn, host: str, port: int, timeout: float = 30.0):
        self.conn, self.host, self.port, self.timeout = conn, host, port, timeout

    def request(self, method: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        http_conn = _ChannelHTTPConnection(self.conn, self.host, self.port, self.timeout)
        try:
            http_conn.request(method, path, headers=headers or {})
            response = http_conn.getresponse()
            body = response.read() if method != "HEAD" else b""
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        except Exception as exc:  # noqa: BLE001 - channel refused, timeouts, protocol errors
            raise Failure(
                f"the cluster registry at {self.host}:{self.port} did not answer {method} {path}: {exc}",
                "check the registry pod: `clusterous-k8s status`; re-run `up` to restore the add-ons",
            ) from None
        finally:
            http_conn.close()

    def _json(self, path: str, headers: dict | None = None) -> tuple[dict, dict]:
        status, response_headers, body = self.request("GET", path, headers)
        if status == 404:
            return {}, response_headers
        if status != 200:
            raise Failure(f"the cluster registry answered {status} to GET {path}", REGISTRY_LOG_HINT)
        try:
            return json.loads(body or b"{}"), response_headers
        except ValueError:
            raise Failure(f"the cluster registry sent something other than JSON for {path}") from None

    def has_tag(self, name: str, tag: str) -> bool:
        """`HEAD /v2/<name>/manifests/<tag>`: 200 when the tag exists, 404 when not."""
        status, _, _ = self.request("HEAD", f"/v2/{name}/manifests/{tag}", {"Accept": MANIFEST_TYPES})
        if status in (200, 404):
            return status == 200
        raise Failure(
            f"the cluster registry answered {status} to HEAD /v2/{name}/manifests/{tag}", REGISTRY_LOG_HINT
        )

    def _pages(self, path: str | None, key: str) -> list[str]:
        """Every entry of a paginated list, following `Link: <next>; rel="next"` headers.

        distribution serves `_catalog` in pages of at most `catalog.maxentries` (1000 unless
        configured) and answers 400 to a larger `n`, so no `n` is sent: the server's page size
        is used and its links are followed. Tag lists get the same treatment for registries that
        paginate them; 2.8 ignores `n` there and sends every tag (no Link header).
        """
        items: list[str] = []
        seen = {path}
        while path:
            data, headers = self._json(path)
            items += data.get(key) or []
            path = _next_page(headers.get("link"))
            if path in seen:  # a registry that links to a page already read: stop, not loop
                break
            seen.add(path)
        return items

    def repositories(self) -> list[str]:
        return sorted(self._pages("/v2/_catalog", "repositories"))

    def tags(self, name: str) -> list[str]:
        return sorted(self._pages(f"/v2/{name}/tags/list", "tags"))

    def _manifest_and_config(self, name: str, tag: str) -> tuple[str | None, dict, dict]:
        """(digest of the tag, the image manifest, its config); a multi-platform index (BuildKit
        pushes one with its provenance attestation) is described by its first image."""
        manifest, headers = self._json(f"/v2/{name}/manifests/{tag}", {"Accept": MANIFEST_TYPES})
        digest = headers.get("docker-content-digest")
        if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
            entries = manifest.get("manifests") or []
            if not entries:
                return digest, {}, {}
            manifest, _ = self._json(
                f"/v2/{name}/manifests/{entries[0]['digest']}", {"Accept": MANIFEST_TYPES}
            )
        reference = (manifest.get("config") or {}).get("digest")
        config = self._json(f"/v2/{name}/blobs/{reference}")[0] if reference else {}
        return digest, manifest, config

    def image(self, name: str, tag: str) -> ImageInfo:
        """Size and date of one tag."""
        digest, manifest, config = self._manifest_and_config(name, tag)
        if not manifest:
            return ImageInfo(name, tag, None, None, digest)
        size = (manifest.get("config") or {}).get("size", 0) + sum(
            layer.get("size", 0) for layer in manifest.get("layers") or []
        )
        return ImageInfo(name, tag, size, config.get("created"), digest)

    def label(self, name: str, tag: str, key: str) -> tuple[str | None, str | None]:
        """(digest of name:tag, the value of its image label `key`); (None, None) without the tag."""
        if not self.has_tag(name, tag):
            return None, None
        digest, _, config = self._manifest_and_config(name, tag)
        labels = (config.get("config") or {}).get("Labels") or {}
        return digest, labels.get(key)


def push_secrets(password: str, push_registry: str) -> list[dict]:
    """The two Secrets of the push credential: the bcrypt htpasswd line the push registry checks
    (distribution's htpasswd auth takes bcrypt only), and the docker config build Jobs use."""
    import base64

    import bcrypt

    def secret(name: str, kind: str, key: str, text: str) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "labels": {"app.kubernetes.io/part-of": "clusterous-k8s"},
            },
            "type": kind,
            "data": {key: base64.b64encode(text.encode()).decode()},
        }

    line = f"{PUSH_USER}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n"
    auth = base64.b64encode(f"{PUSH_USER}:{password}".encode()).decode()
    config = json.dumps({"auths": {push_registry: {"auth": auth}}})
    return [
        secret(HTPASSWD_SECRET, "Opaque", "htpasswd", line),
        secret(PUSH_AUTH_SECRET, "kubernetes.io/dockerconfigjson", ".dockerconfigjson", config),
    ]


def ensure_push_credentials(api, push_registry: str) -> str:
    """Make the push credential once per cluster, over the API (so never in user-data, and never
    printed): 'unchanged' when both Secrets exist, else a new random password in both ('created')."""
    import secrets

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    namespace = NAMESPACE
    present = []
    for name in (HTPASSWD_SECRET, PUSH_AUTH_SECRET):
        try:
            core.read_namespaced_secret(name, namespace)
            present.append(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
    if len(present) == 2:
        return "unchanged"
    for body in push_secrets(secrets.token_urlsafe(32), push_registry):
        name = body["metadata"]["name"]
        if name in present:
            core.replace_namespaced_secret(name, namespace, body)  # type: ignore[arg-type]  # a dict body is sent as it is
        else:
            core.create_namespaced_secret(namespace, body)  # type: ignore[arg-type]  # a dict body is sent as it is
    return "created"


def _next_page(link: str | None) -> str | None:
    """The path and query of the `rel="next"` target of a Link header (RFC 8288), if any."""
    from urllib.parse import urlsplit

    for part in (link or "").split(","):
        target, _, params = part.partition(";")
        target = target.strip()
        if target.startswith("<") and target.endswith(">") and 'rel="next"' in params.replace(" ", ""):
            url = urlsplit(target[1:-1])
            return url.path + (f"?{url.query}" if url.query else "")
    return None
