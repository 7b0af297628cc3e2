"""Image references: short names come from the cluster's own registry, full references pass.

CLUSTER_REGISTRY is the one name for the in-cluster registry: pods reach it through the
cluster DNS (the registry Service in clusterous-system), and every node's k3s registries.yaml
mirrors the same name to it, so an image pushed by a build Job is pulled by the same name.
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
    """Where the cluster pulls `reference` from: short names and Clusterous' registry:5000
    go to the cluster registry; anything naming another registry host is left alone."""
    host = registry_host(reference)
    if host == LEGACY_REGISTRY:
        return f"{registry}/{reference.partition('/')[2]}"
    if host is not None:
        return reference
    return f"{registry}/{reference}"
