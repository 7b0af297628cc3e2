"""Reading a user's file: every way it can be wrong is bad input naming the file."""

from __future__ import annotations

from pathlib import Path

from clusterous_core.errors import BadInput, Shown


def _a(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


def read_text(path: Path | str, what: str) -> str:
    """The text of `path`, `what` saying what the file should be (e.g. "cluster file").

    A missing or unreadable file, a directory or bytes that are not UTF-8 (with the line of the
    first such byte) raise BadInput with the file's name.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(str(path), None, f"an existing {what}") from None
    except IsADirectoryError:
        raise BadInput(str(path), None, f"{_a(what)}, not a directory") from None
    except OSError as exc:
        raise BadInput(
            str(path), None, f"a readable {what}", Shown((exc.strerror or str(exc)).lower())
        ) from None
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        got = Shown(f"the byte 0x{data[exc.start]:02x}, not UTF-8")
        raise BadInput(str(path), f"line {line}", f"{_a(what)} in UTF-8 text", got) from None


def parse(text: str, path: Path | str, *, every_document: bool = False):
    """The YAML document in `text` (or all of them); broken YAML is bad input naming its line."""
    import yaml

    try:
        return list(yaml.safe_load_all(text)) if every_document else yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(str(path), where, "valid YAML", Shown(problem)) from None


def read_mapping(path: Path | str, what: str, empty_ok: bool = True) -> dict:
    """The YAML mapping in `path`, `what` saying what the file should be (e.g. "cluster file").

    Everything read_text refuses, broken YAML (with its line) or a document that is not a mapping
    raises BadInput with the file's name; nothing is half-read.
    """
    data = parse(read_text(path, what), path)
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        got = Shown("an empty file") if data is None else data
        raise BadInput(str(path), None, f"a YAML mapping ({what})", got)
    return data
