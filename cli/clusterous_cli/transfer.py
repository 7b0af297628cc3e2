"""Shared-volume transfers: only what changed crosses the wire, nothing lands outside the volume's root.

Two ways to move files, same semantics:
- rsync over SSH (`transfer_rsync`), tried first whenever rsync and ssh exist here: no question
  is asked before it starts. Its `-e` command is built from the same pinned known_hosts and key as
  our paramiko connection (StrictHostKeyChecking=yes), and its remote end runs behind a small
  script that checks the path and pins the directory in the same SSH exec. When that script
  reports that the controller has no rsync, the transfer falls back to:
- SFTP (`transfer_sftp`), over a paramiko connection opened only then: a file is skipped when
  size and mtime match, else written to a fresh temporary file and renamed over its target.

Paths given by the user are relative to the shared volume's root (`shared_root` of the
controller record). They are checked twice: as text here (no absolute paths, no `..`), and on the
controller, where no existing component of the path may be a symlink (any pod can write the
volume and plant one). Symlinks inside a tree that point outside it are skipped in both
directions (`--safe-links`).

`put(..., only=FILES, delete=True)` makes the destination exactly FILES (relative paths inside
the local folder, e.g. a build context after `.dockerignore`): other local files are not sent, and
remote files outside FILES are removed (rsync `--delete --delete-excluded` with an include list;
SFTP removes them itself). Build contexts rely on it: a file the user deleted or ignored must not
stay on the volume and reach an image through `COPY . .`.

Destination rule (the same for put and get): a directory lands exactly at the destination path, so
repeating a transfer updates it in place; a file lands at the destination, or inside it when the
destination is an existing directory or ends in `/`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path, PurePosixPath

from clusterous_core.errors import BadInput, Failure

PART_SUFFIX = ".clusterous-part"
CHUNK = 1024 * 1024


class Report:
    """What a transfer did: the files it sent and how many bytes, per method. (A plain class: see
    endpoint.ControllerEndpoint on dataclasses and start-up.)"""

    def __init__(self, method: str) -> None:
        self.method = method
        self.transferred: list[str] = []
        self.bytes = 0
        self.unchanged = 0
        self.skipped_links: list[str] = []
        self.seconds = 0.0
        self.deleted: list[str] = []


class NullProgress:
    """The progress interface: `total` once when known, then `advance` (SFTP) or `absolute` (rsync)."""

    def total(self, size: int) -> None: ...

    def advance(self, size: int) -> None: ...

    def absolute(self, done: int, percent: int) -> None: ...


class OnDemand:
    """The controller connection for `put`/`get`, opened on first use: the rsync path never
    needs it (rsync makes its own), so a transfer costs one SSH connection, not two.
    `control_socket`: the tunnel supervisor's OpenSSH master, for rsync's ssh to reuse."""

    def __init__(self, endpoint, connect, control_socket: str | None = None):
        self.endpoint, self._connect, self._conn = endpoint, connect, None
        self.control_socket = control_socket

    def sftp(self):
        if self._conn is None:
            self._conn = self._connect()
        return self._conn.sftp()

    def __enter__(self) -> OnDemand:
        return self

    def __exit__(self, *exc) -> None:
        if self._conn is not None:
            self._conn.close()


# --- paths ---------------------------------------------------------------------------------


def relative_remote(path: str | None, what: str = "REMOTE") -> PurePosixPath:
    """A user path as a clean relative path inside the volume; '' or '.' is the root itself."""
    text = (path or ".").replace("\\", "/")
    if text.startswith(("/", "~")):
        raise BadInput(
            what, None, "a path relative to the shared volume's root (no leading '/' or '~')", path
        )
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadInput(what, None, "a path inside the shared volume ('..' is not allowed)", path)
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def local_tree(root: Path, report: Report):
    """(relative dir, files) with symlinks that point outside root skipped and reported."""
    real_root = os.path.realpath(root)
    for current, dirs, files in os.walk(root, followlinks=False):
        rel = os.path.relpath(current, root)
        kept = []
        for name in files + [d for d in dirs if os.path.islink(os.path.join(current, d))]:
            full = os.path.join(current, name)
            if os.path.islink(full):
                target = os.path.realpath(full)
                if not inside(target, real_root) or not os.path.isfile(target):
                    report.skipped_links.append(os.path.join(rel, name))
                    continue
            kept.append(name)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(current, d))]
        yield ("" if rel == "." else rel), sorted(kept)


def _grouped(paths: list[str]) -> list[tuple[str, list[str]]]:
    """Relative file paths as (directory, sorted names), the shape `_local_tree` yields."""
    by_dir: dict[str, list[str]] = {}
    for path in paths:
        head, _, name = path.rpartition("/")
        by_dir.setdefault(head, []).append(name)
    return [(d, sorted(names)) for d, names in sorted(by_dir.items())]


# --- put and get ---------------------------------------------------------------------------


def _first_method(method: str) -> str:
    """The method to try first; rsync needs rsync and ssh here (the controller's side is tried)."""
    if method not in ("auto", "rsync", "sftp"):
        raise BadInput("--method", None, "auto, rsync or sftp", method)
    if method != "sftp" and shutil.which("rsync") and shutil.which("ssh"):
        return "rsync"
    if method == "rsync":
        raise Failure("rsync (and ssh) must be installed here", "install rsync, or pass --method sftp")
    return "sftp"


def _rsync_ssh(conn):
    """(endpoint, the supervisor's master socket or None): what rsync's ssh command is built from."""
    return conn.endpoint, getattr(conn, "control_socket", None)


def _figures(progress):
    """Where rsync's progress figures go: the bar's `absolute`; None when no bar is shown (a pipe,
    a script), and then rsync is not asked for them at all."""
    return None if isinstance(progress, NullProgress) else progress.absolute


def _no_rsync_there(method: str) -> None:
    if method == "rsync":
        raise Failure("the controller has no rsync", "install rsync there, or pass --method sftp")


def put(
    conn,
    local: Path,
    remote: str | None,
    method: str = "auto",
    progress=None,
    only: list[str] | None = None,
    delete: bool = False,
) -> Report:
    """Send a file or tree to the shared volume; unchanged files are not sent again.

    For a tree: `only` limits what is sent to those relative paths; `delete` removes what the
    destination holds beyond what is sent (files the user deleted, or left out with `only`).
    `conn` needs `.endpoint` and, for SFTP only, `.sftp()` (an `OnDemand` opens it when needed)."""
    from clusterous_cli import transfer_rsync

    progress = progress or NullProgress()
    if not local.exists():
        raise BadInput("LOCAL", None, "an existing file or directory", str(local))
    if (only is not None or delete) and not local.is_dir():
        raise BadInput("LOCAL", None, "a directory (only/delete apply to trees)", str(local))
    rel = relative_remote(remote if remote else Path(os.path.abspath(local)).name)
    into_dir = bool(remote and remote.endswith("/"))
    started = time.monotonic()
    report = Report(_first_method(method))
    files: list[tuple[str, list[str]]]
    if not local.is_dir():
        files, count = [("", [])], 1
    else:
        files = _grouped(only) if only is not None else list(local_tree(local, report))
        count = sum(len(names) for _, names in files)
    if not isinstance(progress, NullProgress):  # a stat of every file, only for a bar someone sees
        paths = [local] if not local.is_dir() else [local / d / n for d, names in files for n in names]
        progress.total(sum(path.stat().st_size for path in paths))
    if report.method == "rsync":
        try:
            transfer_rsync.put(
                _rsync_ssh(conn), local, rel, into_dir, only, delete, report, _figures(progress)
            )
            report.unchanged = count - len(report.transferred)
        except transfer_rsync.NoRemoteRsync:
            _no_rsync_there(method)
            report.method = "sftp"
    if report.method == "sftp":
        from clusterous_cli import transfer_sftp  # only then: it imports what rsync's path never needs

        transfer_sftp.put(conn, local, rel, into_dir, files, delete, report, progress)
    report.seconds = time.monotonic() - started
    return report


def get(conn, remote: str, local: Path | None, method: str = "auto", progress=None) -> Report:
    """Fetch a file or tree from the shared volume; unchanged local files are not fetched again."""
    from clusterous_cli import transfer_rsync

    progress = progress or NullProgress()
    rel = relative_remote(remote)
    if local is not None and not local.is_dir() and not local.absolute().parent.is_dir():
        raise BadInput("LOCAL", None, "a path whose parent directory exists", str(local))
    started = time.monotonic()
    report = Report(_first_method(method))
    if report.method == "rsync":
        try:
            transfer_rsync.get(_rsync_ssh(conn), rel, local, report, _figures(progress))
        except transfer_rsync.NoRemoteRsync:
            _no_rsync_there(method)
            report.method = "sftp"
    if report.method == "sftp":
        from clusterous_cli import transfer_sftp

        transfer_sftp.get(conn, rel, local, report, progress)
    report.seconds = time.monotonic() - started
    return report
