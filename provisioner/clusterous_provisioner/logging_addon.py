"""Central logging as a k3s HelmChart object: what `up` applies for levels 1|2 and deletes for 0.

k3s's built-in helm-controller installs a chart from a HelmChart object in kube-system. The
chart (charts/clusterous-logging) travels inside that object as a base64 .tgz in
`spec.chartContent`, so the cluster fetches nothing from a chart repository and the client
needs no helm binary: the archive is built here, deterministically (fixed order, owners and
mtimes), so the same chart always gives the same object and re-running `up` changes nothing.

Pure functions only: no AWS and no Kubernetes calls. docs/logging.md says how `up` uses them.
"""

from __future__ import annotations

import base64
import fnmatch
import gzip
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from clusterous_core.errors import BadInput

LEVELS = (0, 1, 2)
LEVEL_EXPECTED = "0 (off), 1 (application logs) or 2 (application and system logs)"

CHART_NAME = "clusterous-logging"
RELEASE_NAME = "clusterous-logging"  # the HelmChart's name is the Helm release name
DEFAULT_NAMESPACE = "clusterous-logging"  # where the chart's objects go
HELMCHART_NAMESPACE = "kube-system"  # where k3s's helm-controller watches HelmChart objects
HELMCHART_API_VERSION = "helm.cattle.io/v1"
HELMCHART_KIND = "HelmChart"
LEVEL_ANNOTATION = "clusterous.io/logging-level"

# Names the chart gives its objects when the release is RELEASE_NAME (templates/_helpers.tpl).
GRAFANA_SECRET = f"{RELEASE_NAME}-grafana"
GRAFANA_SERVICE = f"{RELEASE_NAME}-grafana"
GRAFANA_PORT = 3000
SYSLOG_PORT = 5514

_FIXED_MTIME = 1_577_836_800  # 2020-01-01T00:00:00Z: any constant keeps the archive reproducible


def check_logging_level(value: object, source: str, field: str | None = None) -> int:
    """The level as an int, or BadInput (exit 2) naming where the bad value came from."""
    if isinstance(value, bool):
        raise BadInput(source, field, LEVEL_EXPECTED, value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or value not in LEVELS:
        raise BadInput(source, field, LEVEL_EXPECTED, value)
    return value


def chart_dir() -> Path:
    """The chart's folder inside this package (in a checkout `clusterous_provisioner/charts` links
    to the top-level charts/; a wheel holds the files). Tests pass another folder as `root`."""
    path = Path(__file__).parent / "charts" / CHART_NAME
    if not (path / "Chart.yaml").is_file():
        raise FileNotFoundError(f"the logging chart is not at {path}; reinstall clusterous-k8s")
    return path


def _ignore_patterns(root: Path) -> list[str]:
    ignore = root / ".helmignore"
    if not ignore.is_file():
        return []
    lines = (line.strip() for line in ignore.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _ignored(rel: PurePosixPath, is_dir: bool, patterns: list[str]) -> bool:
    """The subset of .helmignore rules the chart uses: `name/` for folders, globs on names/paths,
    plus Helm's own default of skipping hidden files under templates/."""
    if rel.parts[0] == "templates" and len(rel.parts) > 1 and rel.name.startswith("."):
        return True
    for pattern in patterns:
        if pattern.endswith("/"):
            if is_dir and fnmatch.fnmatch(rel.name, pattern[:-1]):
                return True
        elif fnmatch.fnmatch(rel.name, pattern) or fnmatch.fnmatch(str(rel), pattern):
            return True
    return False


def chart_files(root: Path | None = None) -> dict[str, bytes]:
    """The chart's files as `helm package` would take them (relative path -> content), sorted."""
    root = Path(root) if root else chart_dir()
    patterns = _ignore_patterns(root)
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        dirnames[:] = sorted(d for d in dirnames if not _ignored(here / d, True, patterns))
        for name in sorted(filenames):
            rel = here / name
            if not _ignored(rel, False, patterns):
                files[str(rel)] = (Path(dirpath) / name).read_bytes()
    return dict(sorted(files.items()))


def chart_metadata(root: Path | None = None) -> dict:
    root = Path(root) if root else chart_dir()
    return yaml.safe_load((root / "Chart.yaml").read_text())


def package_chart(root: Path | None = None) -> bytes:
    """The chart as a .tgz in `helm package`'s layout (<name>/<file>), byte-for-byte reproducible."""
    root = Path(root) if root else chart_dir()
    name = chart_metadata(root)["name"]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, content in chart_files(root).items():
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.size = len(content)
            info.mode = 0o644
            info.mtime = _FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def helmchart_manifest(level: int, namespace: str = DEFAULT_NAMESPACE, root: Path | None = None) -> dict:
    """The HelmChart object that installs (or, applied again, upgrades) logging at level 1 or 2."""
    level = check_logging_level(level, "logging level")
    if level == 0:
        raise ValueError("level 0 removes logging: use logging_manifests(0)")
    meta = chart_metadata(root)
    return {
        "apiVersion": HELMCHART_API_VERSION,
        "kind": HELMCHART_KIND,
        "metadata": {
            "name": RELEASE_NAME,
            "namespace": HELMCHART_NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": "clusterous-k8s"},
            "annotations": {
                LEVEL_ANNOTATION: str(level),
                "clusterous.io/chart-version": str(meta["version"]),
            },
        },
        "spec": {
            "chartContent": base64.b64encode(package_chart(root)).decode("ascii"),
            "targetNamespace": namespace,
            "createNamespace": True,
            # A failed upgrade must not uninstall: that would delete Loki's volume and the logs.
            "failurePolicy": "abort",
            "valuesContent": yaml.safe_dump({"level": level}, sort_keys=True),
        },
    }


def helmchart_yaml(level: int, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The HelmChart as a manifest file (for `--render-dir` or k3s's auto-deploy folder)."""
    return yaml.safe_dump(helmchart_manifest(level, namespace), sort_keys=False, width=1_000_000)


@dataclass(frozen=True)
class LoggingChange:
    """What `up` does about logging: apply `manifest` (levels 1|2) or delete the object (level 0).

    Deleting the HelmChart makes the helm-controller uninstall the release; removing a file from
    k3s's manifests folder would not (k3s never deletes what a removed file created).
    """

    level: int
    action: str  # "apply" | "delete"
    api_version: str
    kind: str
    namespace: str
    name: str
    manifest: dict | None = None


def logging_manifests(level: int, namespace: str = DEFAULT_NAMESPACE) -> LoggingChange:
    """The change for a requested level; `level` comes from the cluster file or --logging-level."""
    level = check_logging_level(level, "logging level")
    ref: dict[str, Any] = {
        "api_version": HELMCHART_API_VERSION,
        "kind": HELMCHART_KIND,
        "namespace": HELMCHART_NAMESPACE,
        "name": RELEASE_NAME,
    }
    if level == 0:
        return LoggingChange(level=0, action="delete", **ref)
    return LoggingChange(level=level, action="apply", manifest=helmchart_manifest(level, namespace), **ref)
