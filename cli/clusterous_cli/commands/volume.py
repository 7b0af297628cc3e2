"""`ls`, `put`, `get`, `rm`: the cluster's shared volume, as in Clusterous (paths relative to its root)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from clusterous_cli.commands.options import CLUSTER_OPTION, JSON_OPTION, YES_OPTION, cluster_ref

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


def _progress(label: str):
    """A progress bar on a terminal; elsewhere nothing (and rich.progress is not even imported)."""
    import sys

    from clusterous_cli import transfer

    return RichProgress(label) if sys.stderr.isatty() else contextlib.nullcontext(transfer.NullProgress())


class RichProgress:
    """A byte progress bar on stderr, shown only on a terminal."""

    def __init__(self, label: str):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = Console(stderr=True)
        self._bar = Progress(
            TextColumn(label),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self._task = self._bar.add_task(label, total=None)

    def __enter__(self):
        self._bar.start()
        return self

    def __exit__(self, *exc):
        self._bar.stop()

    def total(self, size: int) -> None:
        self._bar.update(self._task, total=size)

    def advance(self, size: int) -> None:
        self._bar.advance(self._task, size)

    def absolute(self, done: int, percent: int) -> None:
        total = done * 100 // percent if percent else None
        self._bar.update(self._task, completed=done, total=total)


def _report(verb: str, report, as_json: bool) -> None:
    from clusterous_cli import output

    if as_json:
        output.print_json(
            {
                "method": report.method,
                "transferred": report.transferred,
                "bytes": report.bytes,
                "unchanged": report.unchanged,
                "skipped_links": report.skipped_links,
                "seconds": round(report.seconds, 3),
            }
        )
        return
    for name in report.transferred:
        typer.echo(name)
    mb = report.bytes / 1e6
    output.say(
        f"{verb} {len(report.transferred)} file(s), {mb:.1f} MB in {report.seconds:.1f}s; "
        f"{report.unchanged} unchanged [{report.method}]"
    )
    if report.skipped_links:
        output.say(f"skipped {len(report.skipped_links)} symlink(s) pointing outside the tree")


def _on_demand(ctx: typer.Context, cluster: str | None):
    """The controller connection for put/get, opened only if SFTP is needed (rsync makes its own)."""
    from clusterous_cli import transfer, tunnels
    from clusterous_cli.endpoint import load_endpoint

    def connect():
        from clusterous_cli import ssh  # paramiko's side: not imported when rsync does the work

        return ssh.connect_cluster(ref)

    ref = cluster_ref(ctx, cluster)
    status = tunnels.read_status(ref)  # a running tunnel supervisor's OpenSSH master, if any
    master = status.get("control_socket") if status.get("connected") else None
    return transfer.OnDemand(load_endpoint(ref), connect, master)


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
    from clusterous_cli import transfer
    from clusterous_core.errors import BadInput

    if not local.exists():
        raise BadInput("LOCAL", None, "an existing file or directory", str(local))
    transfer.relative_remote(remote if remote else local.resolve().name)
    with _on_demand(ctx, cluster) as conn, _progress("put") as progress:
        report = transfer.put(conn, local, remote, method, progress)
    _report("sent", report, as_json)


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
    from clusterous_cli import transfer

    transfer.relative_remote(remote)
    with _on_demand(ctx, cluster) as conn, _progress("get") as progress:
        report = transfer.get(conn, remote, local, method, progress)
    _report("fetched", report, as_json)


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
