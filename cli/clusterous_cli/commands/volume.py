"""`ls`, `put`, `get`, `rm`: the cluster's shared volume, as in Clusterous (paths relative to its root)."""

from __future__ import annotations

from pathlib import Path

import typer

from clusterous_cli.commands.options import (
    CLUSTER_OPTION,
    JSON_OPTION,
    YES_OPTION,
    cluster_ref,
    profile_option,
)

METHOD_OPTION = typer.Option(
    "auto", "--method", help="auto: rsync when both ends have it, else SFTP; or force rsync / sftp."
)

LS_HELP = "List a directory of the shared volume.\n\nExample: clusterous-k8s ls results"
PUT_HELP = (
    "Copy a local file or directory to the shared volume; only changed files are sent.\n\n"
    "REMOTE is relative to the volume's root [the local name]. A directory lands exactly at REMOTE, so\n"
    "running put again updates it; a file lands inside REMOTE when that is a directory or ends in '/'.\n\n"
    "Example: clusterous-k8s put ./launch_scripts launch_scripts"
)
GET_HELP = (
    "Copy a file or directory from the shared volume; only changed files are fetched.\n\n"
    "Example: clusterous-k8s get results ./results"
)
RM_HELP = "Remove a file or directory from the shared volume (asks first).\n\nExample: clusterous-k8s rm old-results --yes"


def ls(
    ctx: typer.Context,
    path: str = typer.Argument(".", metavar="PATH", help="Directory relative to the volume's root."),
    cluster: str | None = CLUSTER_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    import stat
    import time

    from clusterous_cli import output, ssh, transfer, transfer_sftp
    from clusterous_core.errors import BadInput

    rel = transfer.relative_remote(path, "PATH")
    with ssh.connect_cluster(cluster_ref(ctx, cluster)) as conn, conn.sftp() as sftp:
        _, target = transfer_sftp.resolve_remote(sftp, conn.endpoint.shared_root, rel)
        try:
            attrs = sftp.stat(target)
        except OSError:
            raise BadInput("PATH", None, "an existing path on the shared volume", path) from None
        if stat.S_ISDIR(attrs.st_mode):
            entries = sorted(sftp.listdir_attr(target), key=lambda e: e.filename)
        else:
            attrs.filename = rel.name
            entries = [attrs]
    rows = []
    for entry in entries:
        if entry.filename.endswith(transfer.PART_SUFFIX):
            continue
        kind = "dir" if stat.S_ISDIR(entry.st_mode) else "link" if stat.S_ISLNK(entry.st_mode) else "file"
        rows.append({"name": entry.filename, "type": kind, "size": entry.st_size, "modified": entry.st_mtime})
    if as_json:
        output.print_json(rows)
        return
    output.print_table(
        None,
        ["name", "size", "modified"],
        [
            (
                r["name"] + ("/" if r["type"] == "dir" else ""),
                "" if r["type"] == "dir" else r["size"],
                time.strftime("%Y-%m-%d %H:%M", time.localtime(r["modified"])),
            )
            for r in rows
        ],
    )


def put(
    ctx: typer.Context,
    local: Path = typer.Argument(..., metavar="LOCAL", help="Local file or directory."),
    remote: str = typer.Argument(
        None, metavar="REMOTE", help="Destination relative to the volume's root [the local name]."
    ),
    cluster: str | None = CLUSTER_OPTION,
    method: str = METHOD_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import volume_copy  # a plain put runs it without typer: see there

    volume_copy.put(profile_option(ctx), cluster, local, remote, method, as_json)


def get(
    ctx: typer.Context,
    remote: str = typer.Argument(
        ..., metavar="REMOTE", help="File or directory relative to the volume's root."
    ),
    local: Path = typer.Argument(None, metavar="LOCAL", help="Local destination [./NAME]."),
    cluster: str | None = CLUSTER_OPTION,
    method: str = METHOD_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    from clusterous_cli import volume_copy

    volume_copy.get(profile_option(ctx), cluster, remote, local, method, as_json)


def rm(
    ctx: typer.Context,
    path: str = typer.Argument(..., metavar="PATH", help="File or directory relative to the volume's root."),
    cluster: str | None = CLUSTER_OPTION,
    yes: bool = YES_OPTION,
) -> None:
    import posixpath

    from clusterous_cli import output, ssh, transfer, transfer_sftp
    from clusterous_core.errors import BadInput, Failure

    rel = transfer.relative_remote(path, "PATH")
    if str(rel) == ".":
        raise BadInput(
            "PATH", None, "a path below the volume's root (the root itself cannot be removed)", path
        )
    with ssh.connect_cluster(cluster_ref(ctx, cluster)) as conn:
        with conn.sftp() as sftp:
            # Resolve the parent only: a symlink named PATH is removed itself, never what it points to.
            _, parent = transfer_sftp.resolve_remote(sftp, conn.endpoint.shared_root, rel.parent)
            target = posixpath.join(parent, rel.name)
            try:
                sftp.lstat(target)
            except OSError:
                raise BadInput("PATH", None, "an existing path on the shared volume", path) from None
        if not yes and not typer.confirm(
            f"Remove {path} from the shared volume of {conn.endpoint.host}?", default=False
        ):
            raise typer.Abort()
        # Any pod can write the volume, so it may swap a directory of PATH for a symlink while we
        # ask: the check and the removal happen again in one remote step that follows no link.
        code, _, err = conn.run(
            [
                "sh",
                "-c",
                _REMOVE_SCRIPT,
                "clusterous-rm",
                conn.endpoint.shared_root,
                rel.name,
                *rel.parent.parts,
            ]
        )
        if code == _REMOVE_REFUSED:
            raise BadInput("PATH", None, "a path on the shared volume that no symlink leads out of", path)
        if code != 0:
            raise Failure(
                f"could not remove {path}: {err.decode(errors='replace').strip()}", "check its permissions"
            )
    output.say(f"removed {path}")


_REMOVE_REFUSED = 3
# sh -c SCRIPT clusterous-rm ROOT NAME DIR...: enter ROOT/DIR/... one directory at a time, refusing
# any symlink, then check that where we stand is physically ROOT/DIR/... (a swap between the test
# and the cd shows up here); from inside that directory, whatever happens to its ancestors, rm
# removes NAME itself (a symlink NAME is removed, never followed).
_REMOVE_SCRIPT = """
cd -P -- "$1" || exit 1
root=$(pwd -P) name=$2 expected=
shift 2
for dir in "$@"; do
    if [ -L "$dir" ] || [ ! -d "$dir" ]; then echo "$dir is not a directory" >&2; exit 3; fi
    cd -P -- "$dir" || exit 1
    expected="$expected/$dir"
done
if [ "$(pwd -P)" != "$root$expected" ]; then echo "a directory was replaced" >&2; exit 3; fi
exec rm -rf -- "$name"
"""
