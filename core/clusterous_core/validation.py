"""pydantic's errors in the words of a person editing a YAML file.

pydantic says "Input should be a valid string" or "Value error, must be ..."; a user reads
"cluster.yml: parameters.worker_count: expected an integer (got 'two')". Every reader of a
file checked by a pydantic model (cluster file, profiles and settings) reports through here.
pydantic itself is not imported: the error dicts of `ValidationError.errors()` are enough.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from clusterous_core.errors import NOTHING, BadInput

# pydantic error types → what was expected, in YAML terms
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "decimal_type": "a number",
    "decimal_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "a number of at least {}"),
    "greater_than": ("gt", "a number above {}"),
    "less_than_equal": ("le", "a number of at most {}"),
    "less_than": ("lt", "a number below {}"),
    "string_too_short": ("min_length", "a string of at least {} characters"),
    "string_too_long": ("max_length", "a string of at most {} characters"),
    "too_short": ("min_length", "at least {} items"),
    "too_long": ("max_length", "at most {} items"),
}


class Problem(NamedTuple):
    """One pydantic error as a BadInput's parts: field (None for the whole file), expected, got
    (None when there is nothing to show)."""

    field: str | None
    kind: str  # pydantic's error type, for a reader that words some fields its own way
    expected: str
    got: Any


def field_name(loc: Iterable[str | int]) -> str | None:
    """`("node_groups", "w", "count")` → `node_groups.w.count`; list positions as `[i]`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def expected(error: Mapping[str, Any]) -> str:
    """What the field should have been, as a phrase that follows "expected"."""
    kind, ctx, message = error["type"], error.get("ctx") or {}, str(error.get("msg", ""))
    if kind == "missing":
        return "a value (it is required)"
    if kind == "extra_forbidden":
        return f"a known setting (unknown key {str(error['loc'][-1])!r})"
    if kind in ("literal_error", "enum"):
        return f"one of {ctx.get('expected', '')}".replace("'", "")
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    if kind in _BOUNDS:
        key, phrase = _BOUNDS[kind]
        return phrase.format(ctx.get(key))
    # our own validators raise ValueError("must be an X" or "an X"); pydantic prefixes it
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    for prefix in ("must be ", "Input should be "):
        message = message.removeprefix(prefix)
    if message[:1].isupper() and message[1:2].islower():  # "Give ..." but not "IPv4 ..."
        message = message[0].lower() + message[1:]
    return message


def problem(errors: Sequence[Mapping[str, Any]]) -> Problem:
    """The first of `ValidationError.errors()` as a Problem."""
    error = errors[0]
    loc = tuple(error.get("loc") or ())
    got = error.get("input")
    if not loc or error["type"] == "missing" or (isinstance(got, Mapping) and error["type"] not in _EXPECTED):
        got = None  # the whole file, or a mapping whose contents were wrong: not worth showing
    elif got is None:
        got = NOTHING
    return Problem(field_name(loc), error["type"], expected(error), got)


def bad_input(source: str, errors: Sequence[Mapping[str, Any]]) -> BadInput:
    """The BadInput for a file whose pydantic model failed: `raise bad_input(path, exc.errors())`."""
    found = problem(errors)
    return BadInput(source, found.field, found.expected, found.got)
