"""The error model every command shares: what went wrong, and what the user does next.

`BadInput` (exit 2) names the file, the field and what was expected; `Failure` (exit 1) says
what failed and how to continue. Both print as one message without a traceback.
"""

from __future__ import annotations


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
            message += f" (got {got!r})"
        super().__init__(message)


class Failure(ClusterousError):
    """Something outside the user's input failed: exit 1 with the next step."""

    exit_code = 1

    def __init__(self, what: str, next_step: str | None = None):
        self.what, self.next_step = what, next_step
        super().__init__(what if not next_step else f"{what}\n  next: {next_step}")
