"""Merging a cluster's context into the user's kubeconfig so `kubectl` goes through our tunnel.

The file is the first entry of $KUBECONFIG (kubectl's own rule for where new entries go), else
~/.kube/config. Entries of other clusters are kept untouched; ours are named `clusterous-<name>`
(cluster, user and context alike) and replaced on every run, so re-running is harmless.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from clusterous_core.errors import Failure


def target_path() -> Path:
    for entry in os.environ.get("KUBECONFIG", "").split(os.pathsep):
        if entry.strip():
            return Path(entry).expanduser()
    return Path.home() / ".kube" / "config"


def context_name(cluster: str) -> str:
    return f"clusterous-{cluster}"


def _named(entries: list | None, name: str | None) -> dict | None:
    for entry in entries or []:
        if entry.get("name") == name:
            return entry
    return (entries or [None])[0] if name is None else None


def merge(existing: dict, credentials: dict, cluster: str, switch: bool = True) -> dict:
    """`existing` with our cluster/user/context replaced by the ones from `credentials` (k3s.yaml)."""
    name = context_name(cluster)
    source_context = _named(credentials.get("contexts"), credentials.get("current-context")) or {}
    ctx = source_context.get("context") or {}
    source_cluster = _named(credentials.get("clusters"), ctx.get("cluster"))
    source_user = _named(credentials.get("users"), ctx.get("user"))
    if not source_cluster or not source_user:
        raise Failure("the cluster's kubeconfig has no cluster or user entry", "re-run `clusterous-k8s up`")
    merged = copy.deepcopy(existing) if existing else {}
    merged.setdefault("apiVersion", "v1")
    merged.setdefault("kind", "Config")
    merged.setdefault("preferences", {})
    for key, entry in (
        ("clusters", {"name": name, "cluster": copy.deepcopy(source_cluster.get("cluster") or {})}),
        ("users", {"name": name, "user": copy.deepcopy(source_user.get("user") or {})}),
        ("contexts", {"name": name, "context": {"cluster": name, "user": name, **_namespace(ctx)}}),
    ):
        merged[key] = [e for e in merged.get(key) or [] if e.get("name") != name] + [entry]
    if switch or not merged.get("current-context"):
        merged["current-context"] = name
    return merged


def _namespace(ctx: dict) -> dict:
    return {"namespace": ctx["namespace"]} if ctx.get("namespace") else {}


def write(credentials: dict, cluster: str, switch: bool = True, path: Path | None = None) -> Path:
    """Read, merge, write back atomically with mode 0600 (it holds the cluster's admin credentials),
    under an advisory lock so two commands merging at once keep both entries; a symlinked file
    stays a symlink (its target is rewritten)."""
    import yaml

    from clusterous_cli.config import locked, write_private
    from clusterous_core.yamlfile import read_mapping

    path = path or target_path()
    with locked(path):
        existing: dict = {}
        if path.exists():
            existing = read_mapping(path, "kubeconfig")
        write_private(path, yaml.safe_dump(merge(existing, credentials, cluster, switch), sort_keys=False))
    return path
