"""How the operator reaches a cluster that has no public registry to pull it from.

The operator pod runs a pinned stock Python image. Its code is this installation's own
`clusterous_operator` package, zipped (Python imports straight from a zip) into the
`clusterous-operator-code` ConfigMap with the pod's start script; the start script pip-installs
the pinned dependencies once per code version on the controller and runs kopf. So the cluster
runs exactly the operator the CLI was tested with, and nothing has to be built or published.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from functools import lru_cache
from importlib import resources

import yaml

OPERATOR_IMAGE = "python:3.12.11-slim-bookworm"
OPERATOR_MODULE = "clusterous_operator.handlers"  # the module with the kopf handlers
LOCK_FILE = "requirements.txt"  # in the clusterous_operator package: the operator's pins


def read_lock() -> tuple[str, ...]:
    """The `name==version` lines of the operator's lock (also CI's pip constraints file)."""
    text = (resources.files("clusterous_operator") / LOCK_FILE).read_text()
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return tuple(line for line in lines if line)


# What the operator package imports besides the standard library, pinned as tested.
REQUIREMENTS = read_lock()
# Import names of those distributions (a test checks the package imports nothing else).
PROVIDES = {"kopf": "kopf", "kubernetes": "kubernetes", "pyyaml": "yaml"}
CONFIGMAP = "clusterous-operator-code"
ZIP_NAME = "clusterous_operator.zip"
START_SCRIPT = "start.sh"
_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".txt")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same code gives the same bytes and hash


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
    """The installed clusterous_operator package as a deterministic zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in _package_files():
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
    digest.update(" ".join(REQUIREMENTS).encode())
    return digest.hexdigest()[:16]


def code_configmap() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP,
            "namespace": "clusterous-system",
            "labels": {"app.kubernetes.io/part-of": "clusterous-k8s"},
            "annotations": {"clusterous.io/code-hash": code_hash()},
        },
        "data": {START_SCRIPT: start_script()},
        "binaryData": {ZIP_NAME: base64.b64encode(operator_zip()).decode()},
    }


def code_configmap_yaml() -> str:
    header = "# The operator's code (see clusterous_provisioner/operator_bundle.py). Generated.\n"
    return header + yaml.safe_dump(code_configmap(), sort_keys=False, width=1000)


def apply_code(api_client, namespace: str = "clusterous-system") -> str:
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
        core.create_namespaced_config_map(namespace, body)
        return "created"
    annotations = current.metadata.annotations or {}
    if annotations.get("clusterous.io/code-hash") == code_hash():
        return "unchanged"
    body["metadata"]["resourceVersion"] = current.metadata.resource_version
    core.replace_namespaced_config_map(CONFIGMAP, namespace, body)
    return "updated"
