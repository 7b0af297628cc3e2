"""Offline validators and real tool binaries for manifest, chart and bootstrap tests.

    validate_k8s(docs)         every object against Kubernetes' own schemas (kubernetes-validate)
    cloud_init_schema(path)    `cloud-init schema --config-file` on rendered user-data
    shellcheck(path)           `shellcheck` on scripts
    tool_path("kubectl"|"helm")  the real binaries fetched by scripts/fetch-k8s-tools

A missing tool skips a test on a developer's machine but fails it in CI (CI=true), so a green
CI run never hides a skipped check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33"


def missing(what: str) -> None:
    """Skip locally, fail in CI: a check that could not run is never counted as passing."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI; .ci/run installs it")
    pytest.skip(f"{what} not available here")


def tool_path(name: str) -> Path:
    folder = Path(os.environ.get("CLUSTEROUS_TOOLS_BIN", REPO / ".tools" / "bin"))
    path = folder / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        missing(f"{name} (run scripts/fetch-k8s-tools)")
    return path


def system_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        missing(f"{name} (apt-get install {name})")
    return path


class ManifestError(AssertionError):
    pass


def validate_k8s(docs: Iterable[dict], version: str = K8S_VERSION, skip_kinds: Iterable[str] = ()) -> int:
    """Validate objects strictly against the Kubernetes schemas; returns how many were checked.

    Custom resources have no upstream schema: name their kinds in skip_kinds (their own tests
    validate them against the CRD). Any other unknown kind is an error.
    """
    import kubernetes_validate

    checked = 0
    skipped = set(skip_kinds)
    for doc in docs:
        if not doc:
            continue
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") in skipped:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise ManifestError(f"{name}: {exc.message} at {'.'.join(map(str, exc.path))}") from None
        except kubernetes_validate.SchemaNotFoundError as exc:
            raise ManifestError(
                f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')}: {exc}"
            ) from None
        checked += 1
    return checked


def load_yaml_docs(path: Path) -> list[dict]:
    import yaml

    return [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]


def cloud_init_schema(path: Path) -> subprocess.CompletedProcess:
    """Run cloud-init's own schema check; the result's returncode is 0 only for valid user-data."""
    exe = system_tool("cloud-init")
    return subprocess.run([exe, "schema", "--config-file", str(path)], capture_output=True, text=True)


def shellcheck(path: Path, shell: str | None = None) -> subprocess.CompletedProcess:
    exe = system_tool("shellcheck")
    args = [exe, "--format=gcc"] + ([f"--shell={shell}"] if shell else []) + [str(path)]
    return subprocess.run(args, capture_output=True, text=True)
