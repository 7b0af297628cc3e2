"""Shared-volume transfers: only what changed crosses the wire, nothing lands outside the volume's root.

Two ways to move files, same semantics:
- rsync over SSH when rsync exists on both ends. Its `-e` command is built from the same pinned
  known_hosts and key as our paramiko connection (StrictHostKeyChecking=yes), so it trusts the
  same host key. rsync already writes each file to a temporary name and renames it.
- SFTP otherwise: a file is skipped when size and mtime match, else written to a hidden
  `.NAME.clusterous-part` beside its target and renamed over it, so no reader ever sees half.

Paths given by the user are relative to the shared volume's root (`shared_root` of the
controller record). They are checked twice: as text here (no absolute paths, no `..`), and on the
controller, where the deepest existing part of the path is resolved (symlinks included) and must
stay inside the root's own resolved path. Symlinks inside a tree that point outside it are
skipped in both directions (`--safe-links`).

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

import contextlib
import io
import os
import posixpath
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import cast

from clusterous_cli.endpoint import ControllerEndpoint
from clusterous_provisioner.errors import BadInput, Failure

PART_SUFFIX = ".clusterous-part"
ITEM = re.compile(r"^([<>ch.*][fdLDS][^ ]{7,10}) (.+)$")
PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%")
CHUNK = 1024 * 1024


@dataclass
class Report:
    """What a transfer did: the files it sent and how many bytes, per method."""

    method: str
    transferred: list[str] = field(default_factory=list)
    bytes: int = 0
    unchanged: int = 0
    skipped_links: list[str] = field(default_factory=list)
    seconds: float = 0.0
    deleted: list[str] = field(default_factory=list)


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


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_remote(sftp, root: str, rel: PurePosixPath) -> tuple[str, str]:
    """(resolved root, absolute path) after checking on the controller that rel stays inside root."""
    try:
        real_root = sftp.normalize(root)
    except OSError:
        raise Failure(
            f"the shared volume {root} does not exist on the controller",
            "is the cluster fully up? (`clusterous-k8s status`)",
        ) from None
    target = posixpath.join(real_root, str(rel)) if str(rel) != "." else real_root
    existing, rest = target, list[str]()
    while True:
        try:
            sftp.lstat(existing)
            break
        except OSError:
            existing, tail = posixpath.split(existing)
            rest.insert(0, tail)
    try:
        resolved = sftp.normalize(existing)
    except OSError:  # a dangling symlink: it points nowhere we will follow
        raise BadInput(
            "REMOTE", None, "a path inside the shared volume (it crosses a broken symlink)", str(rel)
        ) from None
    if not _inside(resolved, real_root):
        raise BadInput(
            "REMOTE",
            None,
            "a path inside the shared volume (a symlink on the way points outside it)",
            str(rel),
        )
    return real_root, posixpath.join(resolved, *rest) if rest else resolved


def _remote_kind(sftp, path: str) -> str | None:
    try:
        mode = sftp.lstat(path).st_mode
    except OSError:
        return None
    return "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "file"


def ensure_remote_dirs(sftp, real_root: str, path: str) -> None:
    """mkdir -p inside the root, refusing to walk through a symlink (it could lead out)."""
    rel = posixpath.relpath(path, real_root)
    current = real_root
    for part in [] if rel == "." else rel.split("/"):
        current = posixpath.join(current, part)
        kind = _remote_kind(sftp, current)
        if kind is None:
            sftp.mkdir(current)
        elif kind != "dir":
            raise BadInput("REMOTE", None, f"a directory at {current} (it is a {kind})")


# --- rsync ---------------------------------------------------------------------------------


def rsync_available(conn) -> bool:
    if shutil.which("rsync") is None:
        return False
    code, _, _ = conn.run(["sh", "-c", "command -v rsync"], timeout=20)
    return code == 0


def rsync_argv(
    endpoint: ControllerEndpoint, source: str, destination: str, extra: tuple[str, ...] = ()
) -> list[str]:
    """rsync with our pinned ssh; no owner/group (the login user owns the volume's files)."""
    from clusterous_cli import ssh

    return [
        "rsync",
        "-rlpt",
        "--safe-links",
        "--secluded-args",
        "--out-format=%i %n",
        "--info=progress2",
        *extra,
        "-e",
        shlex.join(ssh.openssh_argv(endpoint)),
        source,
        destination,
    ]


def rsync_only_rules(files: list[str]) -> str:
    """An rsync filter file that lets exactly `files` (and their folders) through, anchored at the
    transfer's root; a backslash escapes wildcard characters only in patterns that have one."""

    def literal(path: str) -> str:
        return re.sub(r"([*?\[\\])", r"\\\1", path) if re.search(r"[*?\[]", path) else path

    folders = sorted({"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)})
    rules = [f"+ /{literal(d)}/" for d in folders] + [f"+ /{literal(f)}" for f in files]
    return "\n".join([*rules, "- *", ""])


def run_rsync(argv: list[str], report: Report, progress) -> None:
    """Run rsync, turning its itemized lines into the report and its progress2 lines into the bar."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buffer = b""
    stdout = cast(io.BufferedReader, process.stdout)  # PIPE with the default bufsize: buffered
    while chunk := stdout.read1(65536):
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for raw in lines:
            _rsync_line(raw.decode(errors="replace"), report, progress)
    _rsync_line(buffer.decode(errors="replace"), report, progress)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    code = process.wait()
    if code != 0:
        reason = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {code}"
        raise Failure(f"rsync failed: {reason}", "re-run the command; only what is missing will be sent")


def _rsync_line(line: str, report: Report, progress) -> None:
    if line.startswith("*deleting "):
        report.deleted.append(line[len("*deleting ") :].strip())
    elif match := ITEM.match(line):
        item, name = match.groups()
        if item[1] == "f" and item[0] in "<>":
            report.transferred.append(name)
        elif item[1] == "L" and item[0] not in "c.":
            pass
    elif match := PROGRESS.match(line):
        progress(int(match.group(1).replace(",", "")), int(match.group(2)))


# --- SFTP delta ----------------------------------------------------------------------------


def _same(size_a: int, mtime_a: float, size_b: int, mtime_b: float) -> bool:
    return size_a == size_b and int(mtime_a) == int(mtime_b)


def sftp_put_file(sftp, local: Path, remote: str, report: Report, progress, name: str = "") -> None:
    """Upload one file as a fresh temporary file renamed over REMOTE.

    Pods can plant anything on the volume, so nothing here follows a link: the temporary name is
    random and opened exclusively (O_CREAT|O_EXCL fails on an existing name, a symlink included),
    its mode and times are set on the open handle, and REMOTE must be absent or a regular file
    (rename replaces the entry itself)."""
    info = local.stat()
    try:
        theirs = sftp.lstat(remote)
        if stat.S_ISDIR(theirs.st_mode):
            raise BadInput("REMOTE", None, f"a file path, not the directory {remote}")
        if not stat.S_ISREG(theirs.st_mode):
            raise BadInput(
                "REMOTE", None, f"a regular file or a new name at {remote} (it is a symlink or special file)"
            )
        if _same(info.st_size, info.st_mtime, theirs.st_size, theirs.st_mtime):
            report.unchanged += 1
            return
    except FileNotFoundError:
        pass
    head, tail = posixpath.split(remote)
    part = posixpath.join(head, f".{tail}.{secrets.token_hex(8)}{PART_SUFFIX}")
    try:
        with local.open("rb") as source, sftp.open(part, "wbx") as target:
            target.set_pipelined(True)
            while data := source.read(CHUNK):
                target.write(data)
                progress(len(data))
            target.chmod(stat.S_IMODE(info.st_mode))
            target.utime((info.st_atime, info.st_mtime))
        sftp.posix_rename(part, remote)
    except BaseException:
        with contextlib.suppress(OSError):
            sftp.remove(part)
        raise
    report.transferred.append(name or remote)
    report.bytes += info.st_size


def sftp_get_file(sftp, remote: str, attrs, local: Path, report: Report, progress, name: str = "") -> None:
    if local.is_file() and _same(attrs.st_size, attrs.st_mtime, local.stat().st_size, local.stat().st_mtime):
        report.unchanged += 1
        return
    part = local.with_name(f".{local.name}{PART_SUFFIX}")
    try:
        with sftp.open(remote, "rb") as source, part.open("wb") as target:
            source.prefetch(attrs.st_size)
            while data := source.read(CHUNK):
                target.write(data)
                progress(len(data))
        os.chmod(part, stat.S_IMODE(attrs.st_mode))
        os.utime(part, (attrs.st_atime, attrs.st_mtime))
        os.replace(part, local)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    report.transferred.append(name or str(local))
    report.bytes += attrs.st_size


def _local_tree(root: Path, report: Report):
    """(relative dir, files) with symlinks that point outside root skipped and reported."""
    real_root = os.path.realpath(root)
    for current, dirs, files in os.walk(root, followlinks=False):
        rel = os.path.relpath(current, root)
        kept = []
        for name in files + [d for d in dirs if os.path.islink(os.path.join(current, d))]:
            full = os.path.join(current, name)
            if os.path.islink(full):
                target = os.path.realpath(full)
                if not _inside(target, real_root) or not os.path.isfile(target):
                    report.skipped_links.append(os.path.join(rel, name))
                    continue
            kept.append(name)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(current, d))]
        yield ("" if rel == "." else rel), sorted(kept)


def _remote_tree(sftp, root: str, real_root: str, report: Report):
    """(relative dir, [(name, attrs)]) below root; symlinks are followed only when they stay inside."""
    stack = [""]
    while stack:
        rel = stack.pop()
        files = []
        for entry in sorted(
            sftp.listdir_attr(posixpath.join(root, rel) if rel else root), key=lambda e: e.filename
        ):
            if entry.filename.endswith(PART_SUFFIX):
                continue
            full = posixpath.join(root, rel, entry.filename)
            mode = entry.st_mode
            if stat.S_ISLNK(mode):
                try:
                    target = sftp.normalize(full)
                    attrs = sftp.stat(full)
                except OSError:
                    report.skipped_links.append(posixpath.join(rel, entry.filename))
                    continue
                if not _inside(target, real_root) or not stat.S_ISREG(attrs.st_mode):
                    report.skipped_links.append(posixpath.join(rel, entry.filename))
                    continue
                entry = attrs
                entry.filename = posixpath.basename(full)
                mode = attrs.st_mode
            if stat.S_ISDIR(mode):
                stack.append(posixpath.join(rel, entry.filename))
            elif stat.S_ISREG(mode):
                files.append((posixpath.basename(full), entry))
        yield rel, files


# --- put and get ---------------------------------------------------------------------------


class NullProgress:
    """The progress interface: `total` once when known, then `advance` (SFTP) or `absolute` (rsync)."""

    def total(self, size: int) -> None: ...

    def advance(self, size: int) -> None: ...

    def absolute(self, done: int, percent: int) -> None: ...


def _method(conn, method: str) -> str:
    if method not in ("auto", "rsync", "sftp"):
        raise BadInput("--method", None, "auto, rsync or sftp", method)
    if method == "sftp":
        return "sftp"
    if rsync_available(conn):
        return "rsync"
    if method == "rsync":
        raise Failure("rsync is not installed on both ends", "install rsync, or pass --method sftp")
    return "sftp"


def _rsync_remote(endpoint: ControllerEndpoint, path: str) -> str:
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{host}:{path}"


def _rsync_local(path: Path) -> str:
    """A local path rsync cannot take for a remote one: `data:2024` would name host `data`."""
    text = str(path)
    return text if text.startswith(("/", "./", "../")) else f"./{text}"


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
    destination holds beyond what is sent (files the user deleted, or left out with `only`)."""
    progress = progress or NullProgress()
    if not local.exists():
        raise BadInput("LOCAL", None, "an existing file or directory", str(local))
    if (only is not None or delete) and not local.is_dir():
        raise BadInput("LOCAL", None, "a directory (only/delete apply to trees)", str(local))
    endpoint = conn.endpoint
    rel = relative_remote(remote if remote else Path(os.path.abspath(local)).name)
    into_dir = bool(remote and remote.endswith("/"))
    started = time.monotonic()
    with conn.sftp() as sftp:
        real_root, target = resolve_remote(sftp, endpoint.shared_root, rel)
        kind = _remote_kind(sftp, target)
        if local.is_dir():
            if kind not in (None, "dir"):
                raise BadInput("REMOTE", None, "a directory path (a file is in the way)", remote)
            ensure_remote_dirs(sftp, real_root, target)
        else:
            if kind == "dir" or into_dir:
                ensure_remote_dirs(sftp, real_root, target)
                target = posixpath.join(target, local.name)
                if _remote_kind(sftp, target) in ("dir", "link"):
                    raise BadInput(
                        "REMOTE", None, f"a file path ({target} is a directory or symlink)", remote
                    )
            else:
                ensure_remote_dirs(sftp, real_root, posixpath.dirname(target))
        chosen = _method(conn, method)
        report = Report(chosen)
        files = (
            [(rel_dir, names) for rel_dir, names in _local_tree(local, report)]
            if local.is_dir()
            else [("", [])]
        )
        if only is not None:
            files = _grouped(only)
        sizes = (
            {os.path.join(d, n): (local / d / n).stat().st_size for d, names in files for n in names}
            if local.is_dir()
            else {local.name: local.stat().st_size}
        )
        progress.total(sum(sizes.values()))
        if chosen == "sftp":
            if local.is_dir():
                for rel_dir, names in files:
                    remote_dir = posixpath.join(target, rel_dir) if rel_dir else target
                    ensure_remote_dirs(sftp, real_root, remote_dir)
                    for name in names:
                        sftp_put_file(
                            sftp,
                            local / rel_dir / name,
                            posixpath.join(remote_dir, name),
                            report,
                            progress.advance,
                            os.path.join(rel_dir, name),
                        )
                if delete:
                    _sftp_delete_extra(sftp, target, set(sizes), report)
            else:
                sftp_put_file(sftp, local, target, report, progress.advance, target)
    if chosen == "rsync":
        source = _rsync_local(local) + ("/" if local.is_dir() else "")
        destination = _rsync_remote(endpoint, target + ("/" if local.is_dir() else ""))
        with _rsync_selection(only, delete) as extra:
            run_rsync(rsync_argv(endpoint, source, destination, extra), report, progress.absolute)
        if not local.is_dir():
            report.transferred = [target] if report.transferred else []
        report.bytes = (
            sum(sizes.get(name, 0) for name in report.transferred)
            if local.is_dir()
            else (sizes[local.name] if report.transferred else 0)
        )
        report.unchanged = len(sizes) - len(report.transferred)
    report.seconds = time.monotonic() - started
    return report


def _grouped(paths: list[str]) -> list[tuple[str, list[str]]]:
    """Relative file paths as (directory, sorted names), the shape `_local_tree` yields."""
    by_dir: dict[str, list[str]] = {}
    for path in paths:
        head, _, name = path.rpartition("/")
        by_dir.setdefault(head, []).append(name)
    return [(d, sorted(names)) for d, names in sorted(by_dir.items())]


@contextlib.contextmanager
def _rsync_selection(only: list[str] | None, delete: bool):
    """rsync's extra arguments for `only` (a filter file, removed afterwards) and `delete`."""
    extra = ["--delete", "--delete-excluded"] if delete else []
    if only is None:
        yield tuple(extra)
        return
    with tempfile.NamedTemporaryFile("w", prefix="clusterous-only-", suffix=".rules") as rules:
        rules.write(rsync_only_rules(only))
        rules.flush()
        yield (*extra, f"--filter=merge {rules.name}")


def _sftp_delete_extra(sftp, root: str, keep: set[str], report: Report, rel: str = "") -> bool:
    """Remove what lies below root beyond `keep` (relative paths); True if the folder is empty
    after it. Symlinks are removed, never followed."""
    empty = True
    for entry in sftp.listdir_attr(posixpath.join(root, rel) if rel else root):
        path = posixpath.join(rel, entry.filename) if rel else entry.filename
        full = posixpath.join(root, path)
        if stat.S_ISDIR(entry.st_mode):
            if _sftp_delete_extra(sftp, root, keep, report, path) and not any(
                k.startswith(path + "/") for k in keep
            ):
                sftp.rmdir(full)
                report.deleted.append(path + "/")
                continue
        elif path not in keep:
            sftp.remove(full)
            report.deleted.append(path)
            continue
        empty = False
    return empty


def get(conn, remote: str, local: Path | None, method: str = "auto", progress=None) -> Report:
    """Fetch a file or tree from the shared volume; unchanged local files are not fetched again."""
    progress = progress or NullProgress()
    endpoint = conn.endpoint
    rel = relative_remote(remote)
    started = time.monotonic()
    with conn.sftp() as sftp:
        real_root, target = resolve_remote(sftp, endpoint.shared_root, rel)
        kind = _remote_kind(sftp, target)
        if kind is None:
            raise BadInput("REMOTE", None, "an existing path on the shared volume", remote)
        name = posixpath.basename(target) if target != real_root else "shared"
        destination = local if local is not None else Path.cwd() / name
        if kind == "dir":
            if destination.exists() and not destination.is_dir():
                raise BadInput("LOCAL", None, "a directory path (a file is in the way)", str(destination))
        elif destination.is_dir() or str(local or "").endswith("/"):
            destination = destination / name
        if not destination.parent.is_dir():
            raise BadInput("LOCAL", None, "a path whose parent directory exists", str(destination))
        chosen = _method(conn, method)
        report = Report(chosen)
        if chosen == "sftp":
            if kind == "dir":
                tree = list(_remote_tree(sftp, target, real_root, report))
                progress.total(sum(a.st_size for _, files in tree for _, a in files))
                destination.mkdir(exist_ok=True)
                for rel_dir, files in tree:
                    local_dir = destination / rel_dir
                    local_dir.mkdir(parents=True, exist_ok=True)
                    for file_name, attrs in files:
                        sftp_get_file(
                            sftp, posixpath.join(target, rel_dir, file_name), attrs, local_dir / file_name,
                            report, progress.advance, posixpath.join(rel_dir, file_name),
                        )  # fmt: skip
            else:
                attrs = sftp.stat(target)
                progress.total(attrs.st_size)
                sftp_get_file(sftp, target, attrs, destination, report, progress.advance, str(destination))
    if chosen == "rsync":
        source = _rsync_remote(endpoint, target + ("/" if kind == "dir" else ""))
        run_rsync(
            rsync_argv(endpoint, source, _rsync_local(destination) + ("/" if kind == "dir" else "")),
            report,
            progress.absolute,
        )
        base = destination if kind == "dir" else destination.parent
        names = report.transferred if kind == "dir" else [destination.name] * bool(report.transferred)
        report.bytes = sum((base / n).stat().st_size for n in names if (base / n).is_file())
    report.seconds = time.monotonic() - started
    return report
