"""A build context as BuildKit will see it: the files `.dockerignore` keeps, their size and digest.

Pure functions over a local folder, no I/O beyond reading it, so every check of `build-image`
and `run` (a Dockerfile missing, a context over the size limit) happens before anything is
uploaded, and the digest that decides "rebuild or not" is computed from exactly what is sent.

`.dockerignore` follows Docker's own rules (moby/patternmatcher, which BuildKit's Dockerfile
frontend and the docker CLI use), ported here in a few lines instead of depending on a library:
- one pattern a line; `#` starts a comment line; blank lines are skipped; surrounding space is
  trimmed; a leading `/` is dropped (patterns are relative to the context's root);
- `*` matches any run of characters except `/`, `?` one character except `/`, `[...]` a class,
  `\\` escapes the next character; `**` matches any number of directories (also none);
- a pattern that matches a directory excludes everything below it;
- `!pattern` re-includes what an earlier pattern excluded; the last matching pattern wins;
- the Dockerfile and `.dockerignore` are always sent (the Dockerfile frontend needs them).
`Dockerfile.dockerignore` beside the Dockerfile, when present, replaces `.dockerignore`, as in
BuildKit. (pathspec implements .gitignore, whose rules differ: an unanchored `foo` matches at
any depth there and only at the root here; the docker SDK's copy of the matcher lives in its
private `docker.utils.build` and would add a runtime dependency for 40 lines.)
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from clusterous_core.errors import BadInput, Shown

DOCKERFILE = "Dockerfile"
ALWAYS_SENT = (DOCKERFILE, ".dockerignore")
DEFAULT_MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]


def parse_ignore(text: str) -> list[Pattern]:
    """The patterns of a .dockerignore file, in order."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        line = os.path.normpath(line).replace(os.sep, "/")
        if len(line) > 1 and line.startswith("/"):
            line = line.lstrip("/")
        if line in (".", ""):
            continue
        patterns.append(Pattern(line, exclusion, re.compile(_regex(line))))
    return patterns


def _regex(pattern: str) -> str:
    """moby/patternmatcher's translation of one pattern to a regular expression."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\":
            if i + 1 < len(pattern):
                i += 1
                out += re.escape(pattern[i])
            else:
                out += re.escape("\\")
        elif ch in "[]":
            out += ch
        else:
            out += re.escape(ch)
        i += 1
    return out + "$"


def ignored(patterns: list[Pattern], path: str) -> bool:
    """Whether Docker leaves `path` (relative, '/'-separated) out of the context."""
    parents = path.split("/")[:-1]
    matched = False
    for pattern in patterns:
        if pattern.exclusion != matched:
            continue
        hit = bool(pattern.regex.match(path)) or any(
            pattern.regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
        )
        if hit:
            matched = not pattern.exclusion
    return matched


@dataclass(frozen=True)
class Context:
    """What a build sends: files relative to the root ('/'-separated, sorted), their bytes, digest."""

    root: Path
    files: tuple[str, ...]
    size: int
    digest: str  # sha256:<hex> over every kept path, its executable bit and its content


def _ignore_file(root: Path) -> Path | None:
    for name in (f"{DOCKERFILE}.dockerignore", ".dockerignore"):
        if (root / name).is_file():
            return root / name
    return None


def load(root: Path, source: str = "DIR", max_bytes: int = DEFAULT_MAX_BYTES) -> Context:
    """The context of folder `root`, checked: a Dockerfile in it, within `max_bytes` once ignored
    files are left out. Symlinks are kept only when they point to a file inside the folder (the
    upload follows the same rule); sockets and devices are never sent."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(source, None, "an existing folder holding a Dockerfile", str(root))
    if not (root / DOCKERFILE).is_file():
        raise BadInput(source, None, f"a folder holding a Dockerfile (none in {root})", str(root))
    ignore = _ignore_file(root)
    patterns = parse_ignore(_read(ignore).decode(errors="replace")) if ignore else []
    real_root = os.path.realpath(root)
    kept: list[str] = []
    size = 0
    for current, dirs, names in os.walk(root):
        rel_dir = os.path.relpath(current, root).replace(os.sep, "/")
        prefix = "" if rel_dir == "." else rel_dir + "/"
        # A directory is pruned only when no `!` pattern could bring something below it back.
        dirs[:] = sorted(
            d
            for d in dirs
            if not os.path.islink(os.path.join(current, d))
            and not (ignored(patterns, prefix + d) and not any(p.exclusion for p in patterns))
        )
        for name in names:
            rel = prefix + name
            full = os.path.join(current, name)
            if rel not in ALWAYS_SENT and ignored(patterns, rel):
                continue
            if os.path.islink(full):
                target = os.path.realpath(full)
                if not (target == real_root or target.startswith(real_root + os.sep)):
                    continue
            try:
                info = os.stat(full)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                kept.append(rel)
                size += info.st_size
    if size > max_bytes:
        raise BadInput(
            source,
            None,
            f"a build context of at most {max_bytes // (1024 * 1024)} MiB after .dockerignore "
            f"(it holds {size // (1024 * 1024)} MiB; list what the image does not need in "
            f"{root / '.dockerignore'}, or raise --max-context)",
            str(root),
        )
    kept.sort()
    return Context(root, tuple(kept), size, _digest(root, kept))


def _unreadable(path: Path, exc: OSError) -> BadInput:
    reason = Shown((exc.strerror or str(exc)).lower())
    return BadInput(
        str(path), None, "a readable file of the build context (or list it in .dockerignore)", reason
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _digest(root: Path, files: list[str]) -> str:
    outer = hashlib.sha256()
    for rel in files:
        inner = hashlib.sha256()
        try:
            with open(root / rel, "rb") as handle:
                for block in iter(lambda: handle.read(1024 * 1024), b""):
                    inner.update(block)
        except OSError as exc:
            raise _unreadable(root / rel, exc) from None
        executable = os.stat(root / rel).st_mode & 0o111 != 0
        outer.update(f"{rel}\0{int(executable)}\0{inner.hexdigest()}\n".encode())
    return "sha256:" + outer.hexdigest()
