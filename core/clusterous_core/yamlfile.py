"""Reading a user's YAML file: every way it can be wrong is bad input naming the file."""

from __future__ import annotations

from pathlib import Path

from clusterous_core.errors import BadInput


def read_mapping(path: Path | str, what: str, empty_ok: bool = True) -> dict:
    """The YAML mapping in `path`, `what` saying what the file should be (e.g. "cluster file").

    A missing or unreadable file, a directory, broken YAML (with its line) or a document that is
    not a mapping raises BadInput with the file's name; nothing is half-read.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadInput(str(path), None, f"an existing {what}") from None
    except IsADirectoryError:
        raise BadInput(str(path), None, f"a {what}, not a directory") from None
    except OSError as exc:
        raise BadInput(str(path), None, f"a readable {what}", exc.strerror) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(str(path), where, "valid YAML", problem) from None
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise BadInput(str(path), None, f"a YAML mapping ({what})", type(data).__name__)
    return data
