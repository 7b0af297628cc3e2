"""Shared-volume transfers over SFTP, for controllers without rsync (or `--method sftp`).

A file is skipped when size and mtime match, else written to a fresh temporary file beside its
target and renamed over it, so no reader ever sees half. Paths are checked on the controller
before use: no component may be a symlink (a pod may plant one to lead outside the volume).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import stat
from pathlib import Path, PurePosixPath

from clusterous_cli.transfer import CHUNK, PART_SUFFIX, Report, inside
from clusterous_core.errors import BadInput, Failure


def resolve_remote(sftp, root: str, rel: PurePosixPath) -> tuple[str, str]:
    """(resolved root, absolute path) after checking on the controller that no existing component
    of rel is a symlink, so the path stays physically inside the root."""
    try:
        real_root = sftp.normalize(root)
    except OSError:
        raise Failure(
            f"the shared volume {root} does not exist on the controller",
            "is the cluster fully up? (`clusterous-k8s status`)",
        ) from None
    parts = [] if str(rel) == "." else list(rel.parts)
    current = real_root
    for part in parts:
        current = posixpath.join(current, part)
        try:
            mode = sftp.lstat(current).st_mode
        except OSError:
            break  # missing from here on: nothing to follow
        if stat.S_ISLNK(mode):
            where = posixpath.relpath(current, real_root)
            raise BadInput(
                "REMOTE",
                None,
                f"a path inside the shared volume (no symlink on the way; {where} is one)",
                str(rel),
            )
    return real_root, posixpath.join(real_root, *parts)


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
                if not inside(target, real_root) or not stat.S_ISREG(attrs.st_mode):
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


def put(
    conn, local: Path, rel: PurePosixPath, into_dir: bool, files, delete: bool, report: Report, progress
) -> None:
    """Send `files` ((relative dir, names) under the local folder) or the single file `local`."""
    with conn.sftp() as sftp:
        real_root, target = resolve_remote(sftp, conn.endpoint.shared_root, rel)
        kind = _remote_kind(sftp, target)
        if local.is_dir():
            if kind not in (None, "dir"):
                raise BadInput("REMOTE", None, "a directory path (a file is in the way)", str(rel))
            ensure_remote_dirs(sftp, real_root, target)
            for rel_dir, names in files:
                remote_dir = posixpath.join(target, rel_dir) if rel_dir else target
                ensure_remote_dirs(sftp, real_root, remote_dir)
                for name in names:
                    sftp_put_file(
                        sftp, local / rel_dir / name, posixpath.join(remote_dir, name), report,
                        progress.advance, os.path.join(rel_dir, name),
                    )  # fmt: skip
            if delete:
                _sftp_delete_extra(
                    sftp, target, {os.path.join(d, n) for d, names in files for n in names}, report
                )
            return
        if kind == "dir" or into_dir:
            ensure_remote_dirs(sftp, real_root, target)
            target = posixpath.join(target, local.name)
            if _remote_kind(sftp, target) in ("dir", "link"):
                raise BadInput("REMOTE", None, f"a file path ({target} is a directory or symlink)", str(rel))
        else:
            ensure_remote_dirs(sftp, real_root, posixpath.dirname(target))
        sftp_put_file(sftp, local, target, report, progress.advance, posixpath.relpath(target, real_root))


def get(conn, rel: PurePosixPath, local: Path | None, report: Report, progress) -> None:
    with conn.sftp() as sftp:
        real_root, target = resolve_remote(sftp, conn.endpoint.shared_root, rel)
        kind = _remote_kind(sftp, target)
        if kind is None:
            raise BadInput("REMOTE", None, "an existing path on the shared volume", str(rel))
        name = posixpath.basename(target) if target != real_root else "shared"
        destination = local if local is not None else Path.cwd() / name
        if kind == "dir":
            if destination.exists() and not destination.is_dir():
                raise BadInput("LOCAL", None, "a directory path (a file is in the way)", str(destination))
        elif destination.is_dir():
            destination = destination / name
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
