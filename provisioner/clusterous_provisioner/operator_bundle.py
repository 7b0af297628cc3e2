"""How the operator reaches a cluster that has no public registry to pull it from.

The operator pod runs a stock Python image pinned by digest. Its code is this installation's
own `clusterous_operator` package and the `clusterous_core` it imports, zipped (Python imports
straight from a zip) into the `clusterous-operator-code` ConfigMap with the pod's start script
and the lock; the start script installs the lock with `pip install --require-hashes` once per
lock hash into a cache on the controller (a restart, or new operator code with the same lock,
needs no PyPI) and runs kopf.
So the cluster runs exactly the operator the CLI was tested with, and nothing has to be built
or published.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from functools import lru_cache
from importlib import resources

import yaml

from clusterous_core.names import NAMESPACE

# The official image's multi-platform index digest (linux/amd64 and linux/arm64), pinned so the
# Python the lock's wheels were chosen for never changes under it; operator/Dockerfile uses it too.
OPERATOR_IMAGE = (
    "python:3.12.11-slim-bookworm@sha256:519591d6871b7bc437060736b9f7456b8731f1499a57e22e6c285135ae657bf7"
)
OPERATOR_MODULE = "clusterous_operator.handlers"  # the module with the kopf handlers
LOCK_FILE = "requirements.txt"  # in the clusterous_operator package: the operator's lock
# what the operator imports (pydantic: schema.py, which kubernetes requires too); the lock adds their closure
DIRECT = ("kopf", "kubernetes", "pyyaml", "pydantic")


def lock_text() -> str:
    return (resources.files("clusterous_operator") / LOCK_FILE).read_text()


def read_lock() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The lock as {name: (version, sha256 hashes)}; its `name==version \\ --hash=...` entries."""
    entries: dict[str, tuple[str, tuple[str, ...]]] = {}
    logical = " ".join(line.split("#", 1)[0] for line in lock_text().replace("\\\n", " ").splitlines())
    name = ""  # a hash before any name: KeyError, as with None
    for token in logical.split():
        if token.startswith("--hash=sha256:"):
            version, hashes = entries[name]
            entries[name] = (version, (*hashes, token.removeprefix("--hash=sha256:")))
        else:
            name, _, version = token.partition("==")
            entries[name] = (version, ())
    return entries


def lock_hash() -> str:
    """What the pod's install cache is keyed by (operator-start.sh computes the same)."""
    return hashlib.sha256(lock_text().encode()).hexdigest()[:16]


# The operator's direct dependencies, pinned as tested (`name==version`).
REQUIREMENTS = tuple(f"{name}=={read_lock()[name][0]}" for name in DIRECT)
# Import names of those distributions (a test checks the package imports nothing else).
PROVIDES = {"kopf": "kopf", "kubernetes": "kubernetes", "pyyaml": "yaml", "pydantic": "pydantic"}
CONFIGMAP = "clusterous-operator-code"
ZIP_NAME = "clusterous_operator.zip"
START_SCRIPT = "start.sh"
_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".txt")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same code gives the same bytes and hash
PACKAGES = ("clusterous_operator", "clusterous_core")  # the operator and the core it shares with the CLI


def _package_files(package: str = "clusterous_operator"):
    def walk(node, prefix):
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                if child.name != "__pycache__":
                    yield from walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(_SUFFIXES):
                yield f"{prefix}{child.name}", child.read_bytes()

    yield from walk(resources.files(package), f"{package}/")


@lru_cache(maxsize=1)
def operator_zip() -> bytes:
    """The installed clusterous_operator and clusterous_core packages as a deterministic zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in (entry for package in PACKAGES for entry in _package_files(package)):
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def start_script() -> str:
    return (resources.files("clusterous_provisioner") / "scripts" / "operator-start.sh").read_text()


def code_hash() -> str:
    """Changes whenever the code, the start script or the pins change: the pod rolls then."""
    digest = hashlib.sha256(operator_zip())
    digest.update(start_script().encode())
    digest.update(lock_text().encode())
    return digest.hexdigest()[:16]


def code_configmap() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": "clusterous-k8s"},
            "annotations": {"clusterous.io/code-hash": code_hash()},
        },
        "data": {START_SCRIPT: start_script(), LOCK_FILE: lock_text()},
        "binaryData": {ZIP_NAME: base64.b64encode(operator_zip()).decode()},
    }


def code_configmap_yaml() -> str:
    header = "# The operator's code (see clusterous_provisioner/operator_bundle.py). Generated.\n"
    return header + yaml.safe_dump(code_configmap(), sort_keys=False, width=1000)


def apply_code(api_client, namespace: str = NAMESPACE) -> str:
    """Create or replace the code ConfigMap through the API (the readiness stage of `up` calls
    this once the API answers through the tunnel). Returns "created", "updated" or "unchanged"."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(api_client)
    body = code_configmap()
    try:
        current = core.read_namespaced_config_map(CONFIGMAP, namespace)
    except kubernetes.client.ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespaced_config_map(namespace, body)  # type: ignore[arg-type]  # a dict body is sent as it is
        return "created"
    assert current.metadata is not None  # the API server always returns it
    annotations = current.metadata.annotations or {}
    if annotations.get("clusterous.io/code-hash") == code_hash():
        return "unchanged"
    body["metadata"]["resourceVersion"] = current.metadata.resource_version
    core.replace_namespaced_config_map(CONFIGMAP, namespace, body)  # type: ignore[arg-type]  # a dict body is sent as it is
    return "updated"
