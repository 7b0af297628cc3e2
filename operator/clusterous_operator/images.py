"""Image references, named as Docker names them; only Clusterous' `registry:5000/NAME` is the
cluster's own registry.

CLUSTER_REGISTRY is the one name for the in-cluster registry: pods reach it through the
cluster DNS (the registry Service in clusterous-system), and every node's k3s registries.yaml
mirrors the same name (and registry:5000) to it, so an image pushed by a build Job is pulled by
the same name. Everything else is pulled from where its name says, Docker Hub for a short name
(`ubuntu`, `redis:7`, `jupyter/minimal-notebook`), as `docker pull` would.
"""

from __future__ import annotations

CLUSTER_REGISTRY = "registry.clusterous-system.svc:5000"
LEGACY_REGISTRY = "registry:5000"  # how Clusterous environment files named the cluster registry


def registry_host(reference: str) -> str | None:
    """The registry host a reference names, or None for a short name (Docker's rule)."""
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def resolve_image(reference: str, registry: str = CLUSTER_REGISTRY) -> str:
    """Where the cluster pulls `reference` from, written in full: `registry:5000/NAME` from the
    cluster registry; a reference naming another host unchanged; a short name from Docker Hub
    (`docker.io/library/NAME` for an official image, `docker.io/USER/NAME` otherwise)."""
    host = registry_host(reference)
    if host == LEGACY_REGISTRY:
        return f"{registry}/{reference.partition('/')[2]}"
    if host is not None:
        return reference
    return f"docker.io/{reference}" if "/" in reference else f"docker.io/library/{reference}"


def in_cluster_registry(reference: str, registry: str = CLUSTER_REGISTRY) -> bool:
    """Whether the cluster pulls `reference` from its own registry (built by `build-image`)."""
    return resolve_image(reference, registry).startswith(f"{registry}/")
