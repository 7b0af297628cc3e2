"""`build-image` and `images`: the cluster's registry, filled by builds on the cluster."""

from __future__ import annotations

from pathlib import Path

import typer

from clusterous_cli.commands.cluster_ref import CLUSTER_OPTION, cluster_ref

BUILD_HELP = """Build DIR's Dockerfile on the cluster (BuildKit, rootless) into its registry.

Skipped when the registry already has NAME:TAG (tag `latest` when absent) unless --force.
The build log is streamed; a failed build ends with the log's last lines.

Example: clusterous-k8s build-image examples/basic-python/image basic-python:1.0
"""
IMAGES_HELP = """List the images in the cluster registry: names, tags, sizes and dates.

Example: clusterous-k8s images basic-python --json
"""


def build_image(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., help="Folder holding the Dockerfile (the build context)."),
    name: str = typer.Argument(..., help="NAME[:TAG] in the cluster registry."),
    force: bool = typer.Option(False, "--force", help="Build even when the tag exists."),
    cluster: str = CLUSTER_OPTION,
) -> None:
    from clusterous_cli import builds, envfile, kubeapi, output, ssh
    from clusterous_cli.endpoint import load_endpoint

    builds.check_context(directory)
    image, tag = envfile.split_image_name("NAME", None, name)
    ref = cluster_ref(ctx, cluster)
    load_endpoint(ref)
    with ssh.connect_cluster(ref) as conn:
        api = kubeapi.api_client(ref)
        builds.ensure_built(conn, api, directory, image, tag, output.say, force=force)


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def images(
    ctx: typer.Context,
    name: str = typer.Argument(None, help="Only this image."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    cluster: str = CLUSTER_OPTION,
) -> None:
    from dataclasses import asdict

    from clusterous_cli import kubeapi, output, registry, ssh
    from clusterous_cli.endpoint import load_endpoint

    ref = cluster_ref(ctx, cluster)
    load_endpoint(ref)
    with ssh.connect_cluster(ref) as conn:
        api = kubeapi.api_client(ref)
        reg = registry.Registry(conn, *registry.endpoint_from_cluster_info(api))
        names = [name] if name else reg.repositories()
        found = [reg.image(n, tag) for n in names for tag in reg.tags(n)]
    if as_json:
        output.print_json([asdict(i) for i in found])
        return
    if not found:
        output.say(f"no image {name} in the cluster registry" if name else "the cluster registry is empty")
        return
    output.print_table(
        f"images of {ref.cluster}",
        ["name", "tag", "size", "created"],
        [(i.name, i.tag, _size(i.size), i.created or "?") for i in found],
    )
