"""`volumes ls/rm`: shared volumes kept from earlier clusters (`down --keep-shared-volume`)."""

from __future__ import annotations

import typer

from clusterous_cli.commands.options import JSON_OPTION, REGION_OPTION, YES_OPTION

app = typer.Typer(
    help="Shared volumes kept from earlier clusters.\n\nExample: clusterous-k8s volumes ls",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: flags without placeholders, every [default] shown
)


def _region(ctx: typer.Context, region: str | None) -> str:
    from clusterous_cli import config
    from clusterous_provisioner import aws

    name = config.selected_profile_name(ctx.obj.profile if ctx.obj else None)
    profile = config.load_profile(name) if config.profile_path(name).exists() else None
    return aws.check_region(
        region or (profile.region if profile else None) or aws.session().region_name or ""
    )


@app.command(
    "ls",
    help="List kept shared volumes with size, creation time and last cluster.\n\n"
    "Example: clusterous-k8s volumes ls --json",
)
def list_volumes(
    ctx: typer.Context,
    region: str | None = REGION_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import output
    from clusterous_provisioner import aws, tags, volumes
    from clusterous_provisioner.clients import Clients

    region = _region(ctx, region)
    with aws.aws_errors("volumes ls", "check your AWS credentials and region"):
        found = volumes.kept_volumes(Clients(region))
    rows = [
        {
            "volume_id": v["VolumeId"],
            "size_gib": v["Size"],
            "state": v["State"],
            "created": str(v.get("CreateTime")),
            "zone": v["AvailabilityZone"],
            "last_cluster": tags.as_dict(v.get("Tags")).get(tags.LAST_CLUSTER),
        }
        for v in found
    ]
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.say(f"no kept shared volumes in {region}")
        return
    output.print_table(
        f"kept shared volumes in {region}",
        ["volume", "GiB", "state", "created", "zone", "last cluster"],
        [
            (r["volume_id"], r["size_gib"], r["state"], r["created"], r["zone"], r["last_cluster"])
            for r in rows
        ],
    )
    print("reuse one with: clusterous-k8s up --shared-volume-id VOLUME")


@app.command(
    "rm",
    help="Delete a kept shared volume and its data.\n\nExample: clusterous-k8s volumes rm vol-0123456789abcdef0",
)
def remove(
    ctx: typer.Context,
    volume_id: str = typer.Argument(..., metavar="VOLUME_ID", help="Volume id from `volumes ls`."),
    region: str | None = REGION_OPTION,
    yes: bool = YES_OPTION,
) -> None:
    from clusterous_cli import output
    from clusterous_core.errors import BadInput
    from clusterous_provisioner import aws, tags, volumes
    from clusterous_provisioner.clients import Clients

    region = _region(ctx, region)
    clients = Clients(region)
    with aws.aws_errors("volumes rm", "check your AWS credentials and region"):
        volume = next((v for v in volumes.kept_volumes(clients) if v["VolumeId"] == volume_id), None)
        if volume is None:
            raise BadInput(
                "ID", None, "the id of a kept shared volume (see `clusterous-k8s volumes ls`)", volume_id
            )
        last = tags.as_dict(volume.get("Tags")).get(tags.LAST_CLUSTER) or "unknown"
        question = f"Delete volume {volume_id} ({volume['Size']} GiB, last used by {last}) and all its data?"
        if not yes and not typer.confirm(question, default=False):
            raise typer.Abort()
        volumes.remove_volume(clients, volume_id)
    output.say(f"deleted volume {volume_id}")
