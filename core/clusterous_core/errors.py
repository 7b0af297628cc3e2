"""The error model every command shares: what went wrong, and what the user does next.

`BadInput` (exit 2) names the file, the field and what was expected, with a short `got`;
`Failure` (exit 1) says what failed and how to continue. Both print as one message without a
traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

# Characters of a value shown in a message: enough to recognise it (its start and its end, so a
# long path keeps its file name), never a whole file.
GOT_LIMIT = 60


class Shown(str):
    """A `got` already written in words (e.g. "an empty file"): shown as is, without quotes."""


NOTHING = Shown("nothing")  # what an empty YAML value (`key:`) or a missing document is to a user


def shown(value: object) -> str:
    """`value` as a message shows it: a scalar as written in YAML, shortened; a mapping or a list
    by its YAML name, never echoed whole."""
    if isinstance(value, Shown):
        return value
    if value is None:
        return NOTHING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "an empty list" if not value else "a list"
    if isinstance(value, (int, float)):
        return str(value)
    text = value if isinstance(value, str) else str(value)
    if len(text) > GOT_LIMIT:
        head = (GOT_LIMIT - 3) // 2
        text = text[:head] + "..." + text[head + 3 - GOT_LIMIT :]
    return repr(text)


class ClusterousError(Exception):
    """Base of the errors the CLI reports without a traceback."""

    exit_code = 1

    def render(self) -> str:
        return str(self)


class BadInput(ClusterousError):
    """The user gave something we cannot use: exit 2, nothing changed."""

    exit_code = 2

    def __init__(self, source: str, field: str | None, expected: str, got: object = None):
        self.source, self.field, self.expected, self.got = source, field, expected, got
        where = f"{source}: {field}" if field else source
        message = f"{where}: expected {expected}"
        if got is not None:
            message += f" (got {shown(got)})"
        super().__init__(message)


class Failure(ClusterousError):
    """Something outside the user's input failed: exit 1 with the next step."""

    exit_code = 1

    def __init__(self, what: str, next_step: str | None = None):
        self.what, self.next_step = what, next_step
        super().__init__(what if not next_step else f"{what}\n  next: {next_step}")
