"""`put` and `get` as a person runs them (resolve the cluster, copy, report), without typer.

A small `put` is mostly the CLI's start-up, and importing typer is a third of what is left of it
(docs/ssh.md "Throughput"). So a plain put/get command line (`plain_command`) is run from here
directly by main.run; anything else about it (`--help`, `--verbose`, an unknown, repeated or
misspelled option, a wrong number of arguments) goes through typer, whose commands
(commands/volume.py) call the same `put` and `get`. tests/test_startup.py checks that the
options read here are the typer commands' own.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

# The options of put and get (commands/volume.py declares them for typer): flag -> parameter.
VALUE_OPTIONS = {"--cluster": "cluster", "-c": "cluster", "--method": "method"}
FLAG_OPTIONS = {"--json": "as_json"}
DEFAULTS = {"cluster": None, "method": "auto", "as_json": False}
PROFILE_OPTIONS = ("--profile", "-p")  # the root's, before the command


def plain_command(argv: list[str]) -> tuple[Callable[..., None], dict] | None:
    """(put or get, its keyword arguments) for a plain command line; None for typer to parse."""
    args, profile = list(argv), None
    if args[:1] and args[0] in PROFILE_OPTIONS and len(args) > 1 and not args[1].startswith("-"):
        profile, args = args[1], args[2:]
    if not args or args[0] not in ("put", "get"):
        return None
    options: dict = dict(DEFAULTS)
    seen, positional, rest = set(), [], iter(args[1:])
    for arg in rest:
        if not arg.startswith("-"):
            positional.append(arg)
            continue
        name = VALUE_OPTIONS.get(arg) or FLAG_OPTIONS.get(arg)
        if name is None or name in seen:  # typer's error, or its rule for a repeated option
            return None
        seen.add(name)
        if arg in FLAG_OPTIONS:
            options[name] = True
        elif (value := next(rest, None)) is None or value.startswith("-"):
            return None
        else:
            options[name] = value
    if not 1 <= len(positional) <= 2:
        return None
    first, second = positional[0], positional[1] if len(positional) == 2 else None
    if args[0] == "put":
        return put, {"profile": profile, "local": Path(first), "remote": second, **options}
    return get, {
        "profile": profile,
        "remote": first,
        "local": None if second is None else Path(second),
        **options,
    }


def put(
    profile: str | None, cluster: str | None, local: Path, remote: str | None, method: str, as_json: bool
) -> None:
    from clusterous_cli import transfer
    from clusterous_core.errors import BadInput

    if not local.exists():
        raise BadInput("LOCAL", None, "an existing file or directory", str(local))
    transfer.relative_remote(remote if remote else local.resolve().name)
    with _on_demand(profile, cluster) as conn, _progress("put") as progress:
        report = transfer.put(conn, local, remote, method, progress)
    _report("sent", report, as_json)


def get(
    profile: str | None, cluster: str | None, remote: str, local: Path | None, method: str, as_json: bool
) -> None:
    from clusterous_cli import transfer

    transfer.relative_remote(remote)
    with _on_demand(profile, cluster) as conn, _progress("get") as progress:
        report = transfer.get(conn, remote, local, method, progress)
    _report("fetched", report, as_json)


def _on_demand(profile: str | None, cluster: str | None):
    """The controller connection for put/get, opened only if SFTP is needed (rsync makes its own)."""
    from clusterous_cli import transfer, tunnels
    from clusterous_cli.endpoint import load_endpoint, resolve_cluster

    def connect():
        from clusterous_cli import ssh  # paramiko's side: not imported when rsync does the work

        return ssh.connect_cluster(ref)

    ref = resolve_cluster(profile, cluster)
    status = tunnels.read_status(ref)  # a running tunnel supervisor's OpenSSH master, if any
    master = status.get("control_socket") if status.get("connected") else None
    return transfer.OnDemand(load_endpoint(ref), connect, master)


def _progress(label: str):
    """A progress bar on a terminal; elsewhere nothing (and rich.progress is not even imported)."""
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
        sys.stdout.write(name + "\n")
    mb = report.bytes / 1e6
    output.say(
        f"{verb} {len(report.transferred)} file(s), {mb:.1f} MB in {report.seconds:.1f}s; "
        f"{report.unchanged} unchanged [{report.method}]"
    )
    if report.skipped_links:
        output.say(f"skipped {len(report.skipped_links)} symlink(s) pointing outside the tree")
