"""How our own Python code reaches a cluster that has no public registry to pull it from.

The operator and the autoscaler both run a stock Python image pinned by digest. Their code is
this installation's own packages, zipped deterministically (Python imports straight from a zip)
into a ConfigMap with the pod's start script and a hashed lock; the start script installs the
lock with `pip install --require-hashes` once per lock hash into a cache on the controller (a
restart, or new code with the same lock, needs no PyPI) and runs the process. So the cluster
runs exactly the code the CLI was tested with, and nothing has to be built or published.

A `Bundle` says what goes in: whole packages (the operator: clusterous_operator and
clusterous_core), or the first-party import closure of one module (the autoscaler: what
`clusterous_provisioner.autoscaler` imports, directly or not, from our packages, plus the data
files it reads), so the autoscaler's ConfigMap does not carry the CLI or the operator's handlers.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from clusterous_core.names import NAMESPACE

# The official image's multi-platform index digest (linux/amd64 and linux/arm64), pinned so the
# Python the locks' wheels were chosen for never changes under it; operator/Dockerfile uses it too.
PYTHON_IMAGE = (
    "python:3.12.11-slim-bookworm@sha256:519591d6871b7bc437060736b9f7456b8731f1499a57e22e6c285135ae657bf7"
)
FIRST_PARTY = ("clusterous_core", "clusterous_cli", "clusterous_provisioner", "clusterous_operator")
HASH_ANNOTATION = "clusterous.io/code-hash"
START_SCRIPT = "start.sh"  # scripts/code-start.sh's key in every code ConfigMap
LOCK_KEY = "requirements.txt"  # the lock's key in every code ConfigMap (what the start script installs)
ARGS_KEY = "args"  # what the start script runs: `python <args>`
CONFIGMAP_LIMIT = 1024 * 1024  # bytes of data a ConfigMap holds (etcd's object size, Kubernetes docs)
_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".txt", ".sh")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same code gives the same bytes and hash


@dataclass(frozen=True)
class Bundle:
    """One process's code: what is zipped, its lock, its start script, its ConfigMap."""

    configmap: str  # the ConfigMap's name in clusterous-system
    zip_name: str  # the zip's key in the ConfigMap (the start script puts it on PYTHONPATH)
    lock_package: str  # the package holding the lock file
    lock_file: str
    provides: tuple[tuple[str, str], ...]  # (distribution, import name) of what the code imports
    argv: tuple[str, ...]  # python's arguments in the pod (the ConfigMap's `args`, one a line)
    packages: tuple[str, ...] = ()  # zipped whole (their .py and data files)
    entry: str = ""  # or: this module and its first-party import closure, .py files only ...
    data: tuple[tuple[str, str], ...] = ()  # ... plus these (package, folder) data files

    # -- the lock --------------------------------------------------------------------------------

    def lock_text(self) -> str:
        return (resources.files(self.lock_package) / self.lock_file).read_text()

    def read_lock(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """The lock as {name: (version, sha256 hashes)}; its `name==version \\ --hash=...` entries."""
        return parse_lock(self.lock_text())

    def lock_hash(self) -> str:
        """What the pod's install cache is keyed by (the start scripts compute the same)."""
        return hashlib.sha256(self.lock_text().encode()).hexdigest()[:16]

    @property
    def direct(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.provides)

    def requirements(self) -> tuple[str, ...]:
        """The directly imported distributions, pinned as tested (`name==version`)."""
        lock = self.read_lock()
        return tuple(f"{name}=={lock[name][0]}" for name in self.direct)

    # -- the code --------------------------------------------------------------------------------

    def files(self) -> list[tuple[str, bytes]]:
        """(path in the zip, bytes), sorted: the packages whole, or the entry's closure."""
        found = {name: data for package in self.packages for name, data in _package_files(package)}
        if self.entry:
            for module in import_closure(self.entry):
                file = _module_file(module)
                assert file is not None  # the closure holds only modules that have a file
                found[file[0]] = file[1]
            for package, folder in self.data:
                base = resources.files(package) / folder
                for name, data in _walk(base, f"{package}/{folder}/"):
                    found[name] = data
        return sorted(found.items())

    def zip(self) -> bytes:
        return _zip(self)

    def script(self) -> str:
        """The start script: one for every bundle, the pod's arguments say what runs."""
        return (resources.files("clusterous_provisioner") / "scripts" / "code-start.sh").read_text()

    def code_hash(self) -> str:
        """Changes whenever the code, the start script or the pins change: the pod rolls then."""
        digest = hashlib.sha256(self.zip())
        digest.update(self.script().encode())
        digest.update(self.lock_text().encode())
        digest.update(self.args_text().encode())
        return digest.hexdigest()[:16]

    def args_text(self) -> str:
        return "".join(f"{arg}\n" for arg in self.argv)

    def configmap_body(self) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.configmap,
                "namespace": NAMESPACE,
                "labels": {"app.kubernetes.io/part-of": "clusterous-k8s"},
                "annotations": {HASH_ANNOTATION: self.code_hash()},
            },
            "data": {START_SCRIPT: self.script(), LOCK_KEY: self.lock_text(), ARGS_KEY: self.args_text()},
            "binaryData": {self.zip_name: base64.b64encode(self.zip()).decode()},
        }

    def configmap_yaml(self) -> str:
        import yaml

        header = f"# {self.configmap}: code, lock and start script (clusterous_provisioner/code_bundle.py). Generated.\n"
        return header + yaml.safe_dump(self.configmap_body(), sort_keys=False, width=1000)

    def apply(self, api_client, namespace: str = NAMESPACE) -> str:
        """Create or replace the code ConfigMap through the API (`up`'s setup stage, once the API
        answers through the tunnel): "created", "updated" or "unchanged" (same code hash)."""
        import kubernetes

        core = kubernetes.client.CoreV1Api(api_client)
        body = self.configmap_body()
        try:
            current = core.read_namespaced_config_map(self.configmap, namespace)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise
            core.create_namespaced_config_map(namespace, body)  # type: ignore[arg-type]  # a dict body is sent as it is
            return "created"
        assert current.metadata is not None  # the API server always returns it
        if (current.metadata.annotations or {}).get(HASH_ANNOTATION) == self.code_hash():
            return "unchanged"
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        core.replace_namespaced_config_map(self.configmap, namespace, body)  # type: ignore[arg-type]  # a dict body is sent as it is
        return "updated"


OPERATOR = Bundle(
    configmap="clusterous-operator-code",
    zip_name="clusterous_operator.zip",
    lock_package="clusterous_operator",
    lock_file="requirements.txt",
    # what the operator imports (pydantic: schema.py, which kubernetes requires too)
    provides=(("kopf", "kopf"), ("kubernetes", "kubernetes"), ("pyyaml", "yaml"), ("pydantic", "pydantic")),
    # one active instance (peering); the liveness endpoint the Deployment's probe asks
    argv=(
        "-m",
        "kopf",
        "run",
        "--all-namespaces",
        "--peering=clusterous-operator",
        "--liveness=http://0.0.0.0:8080/healthz",
        "-m",
        "clusterous_operator.handlers",
    ),  # fmt: skip
    packages=("clusterous_operator", "clusterous_core"),
)
AUTOSCALER = Bundle(
    configmap="clusterous-autoscaler-code",
    zip_name="clusterous_autoscaler.zip",
    lock_package="clusterous_provisioner",
    lock_file="autoscaler-requirements.txt",
    # cryptography: joinhash.ca_hash, which the process never calls, but the zip's modules import
    provides=(
        ("boto3", "boto3"),
        ("botocore", "botocore"),
        ("kubernetes", "kubernetes"),
        ("pydantic", "pydantic"),
        ("pyyaml", "yaml"),
        ("cryptography", "cryptography"),
    ),
    argv=("-m", "clusterous_provisioner.autoscaler", "--interval", "30"),
    entry="clusterous_provisioner.autoscaler",
    data=(("clusterous_provisioner", "scripts"),),  # scaling.grow renders the node's user-data
)


def parse_lock(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    entries: dict[str, tuple[str, tuple[str, ...]]] = {}
    logical = " ".join(line.split("#", 1)[0] for line in text.replace("\\\n", " ").splitlines())
    name = ""  # a hash before any name: KeyError, as with None
    for token in logical.split():
        if token.startswith("--hash=sha256:"):
            version, hashes = entries[name]
            entries[name] = (version, (*hashes, token.removeprefix("--hash=sha256:")))
        else:
            name, _, version = token.partition("==")
            entries[name] = (version, ())
    return entries


# --- what goes in the zip ----------------------------------------------------------------------


def _walk(node, prefix: str):
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            if child.name != "__pycache__":
                yield from _walk(child, f"{prefix}{child.name}/")
        elif child.name.endswith(_SUFFIXES):
            yield f"{prefix}{child.name}", child.read_bytes()


def _package_files(package: str):
    """A whole package's code and data files (shell scripts are not part of a whole package)."""
    for name, data in _walk(resources.files(package), f"{package}/"):
        if not name.endswith(".sh"):
            yield name, data


def _module_file(module: str) -> tuple[str, bytes] | None:
    """(path in the zip, source) of a first-party module or package; None if it is neither."""
    top, *rest = module.split(".")
    options = [[*rest[:-1], f"{rest[-1]}.py"], [*rest, "__init__.py"]] if rest else [["__init__.py"]]
    for parts in options:
        candidate = resources.files(top).joinpath(*parts)
        if candidate.is_file():
            return "/".join([top, *parts]), candidate.read_bytes()
    return None


@lru_cache(maxsize=8)
def import_closure(entry: str) -> tuple[str, ...]:
    """Every first-party module `entry` imports, directly or through others, at module level or
    inside functions (a lazy import runs when its function does), with their parent packages."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        file = _module_file(module)
        if file is None:
            continue  # `from package import name` where name is not a module
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in ast.walk(ast.parse(file[1])):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] in FIRST_PARTY]
            elif (
                isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FIRST_PARTY
            ):
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return tuple(sorted(seen))


def third_party_imports(files: list[tuple[str, bytes]]) -> set[str]:
    """Top-level names the zip's modules import that are neither ours nor the standard library."""
    import sys

    found: set[str] = set()
    for name, data in files:
        if not name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(data)):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - set(FIRST_PARTY) - {"__future__"}


@lru_cache(maxsize=4)
def _zip(bundle: Bundle) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in bundle.files():
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()
