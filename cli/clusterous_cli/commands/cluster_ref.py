"""The `--cluster` option the SSH-based commands share, and its resolution to a ClusterRef."""

from __future__ import annotations

import typer

CLUSTER_OPTION = typer.Option(
    None, "--cluster", "-c", help="Cluster to act on [the profile's current cluster]."
)


def cluster_ref(ctx: typer.Context, cluster: str | None):
    from clusterous_cli.endpoint import resolve_cluster

    return resolve_cluster(ctx.obj.profile if ctx.obj else None, cluster)
