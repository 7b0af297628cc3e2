"""`build-image` and `images`: the cluster's registry, filled by builds on the cluster."""

from __future__ import annotations

from pathlib import Path

import typer

from clusterous_cli.commands.options import CLUSTER_OPTION, JSON_OPTION, cluster_ref
from clusterous_core.errors import BadInput

BUILD_HELP = """Build DIR's Dockerfile on the cluster (BuildKit, rootless) into its registry.

Skipped when the registry's NAME:TAG (tag `latest` when absent) was built from exactly this
context (its files after .dockerignore), unless --force; a changed context is rebuilt, reusing
the registry build cache. The build log is streamed; a failure is named (out of memory, evicted,
unschedulable, Docker Hub's pull limit, ...) with the log's last lines.

Example: clusterous-k8s build-image examples/basic-python/image basic-python:1.0
"""
IMAGES_HELP = """List the images in the cluster registry: names, tags, sizes and dates.

Build caches (the `buildcache` tag of each built name) are not listed.

Example: clusterous-k8s images basic-python --json
"""


def _quantity(option: str, value: str) -> str:
    import re

    if not re.fullmatch(r"[1-9][0-9]*(Mi|Gi|Ti)", value):
        raise BadInput(option, None, "a size such as 512Mi, 4Gi or 1Ti", value)
    return value


def build_image(
    ctx: typer.Context,
    directory: Path = typer.Argument(
        ..., metavar="DIR", help="Folder holding the Dockerfile (the build context)."
    ),
    name: str = typer.Argument(..., metavar="NAME", help="NAME[:TAG] in the cluster registry."),
    force: bool = typer.Option(
        False, "--force", help="Build even when the registry holds this context's image."
    ),
    memory: str = typer.Option("4Gi", "--memory", help="Memory limit of the build (OOMKilled above it)."),
    disk: str = typer.Option(
        "20Gi", "--disk", help="Node disk the build requests and may use for its layers."
    ),
    max_context: int = typer.Option(
        512, "--max-context", help="Largest context to upload, in MiB (after .dockerignore)."
    ),
    cluster: str | None = CLUSTER_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import buildjob, builds, envfile, kubeapi, output, ssh
    from clusterous_cli.endpoint import load_endpoint

    image, tag = envfile.split_image_name("NAME", None, name)
    if max_context < 1:
        raise BadInput("--max-context", None, "a size in MiB of at least 1", max_context)
    resources = buildjob.Resources(memory=_quantity("--memory", memory), disk=_quantity("--disk", disk))
    settings = builds.Settings(resources=resources, max_context_bytes=max_context * 1024 * 1024)
    context = builds.check_context(directory, "DIR", settings.max_context_bytes)
    ref = cluster_ref(ctx, cluster)
    load_endpoint(ref)
    with ssh.connect_cluster(ref) as conn:
        api = kubeapi.api_client(ref)
        built = builds.ensure_built(
            conn, api, context, image, tag, output.say, force=force, settings=settings
        )
    if as_json:
        from dataclasses import asdict

        output.print_json(asdict(built))


def _size(size: float | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def images(
    ctx: typer.Context,
    name: str = typer.Argument(None, metavar="NAME", help="Only this image."),
    as_json: bool = JSON_OPTION,
    cluster: str | None = CLUSTER_OPTION,
) -> None:
    from dataclasses import asdict

    from clusterous_cli import buildjob, kubeapi, output, registry, ssh
    from clusterous_cli.endpoint import load_endpoint

    ref = cluster_ref(ctx, cluster)
    load_endpoint(ref)
    with ssh.connect_cluster(ref) as conn:
        api = kubeapi.api_client(ref)
        reg = registry.Registry(conn, *registry.endpoint_from_cluster_info(api))
        names = [name] if name else reg.repositories()
        found = [reg.image(n, tag) for n in names for tag in reg.tags(n) if tag != buildjob.CACHE_TAG]
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
