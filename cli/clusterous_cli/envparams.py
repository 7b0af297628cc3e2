"""Clusterous $variables in environment files, filled from `--param` and the cluster file's
`parameters` (docs/applications.md).

`$name` and `${name}` are filled everywhere; a value that is exactly `$name` keeps the parameter's
type, `$name - N` (the Clusterous cluster-section syntax) subtracts, `$$` is a literal `$`. In a
command only given names are filled: the rest are the shell's own variables (`$HOSTNAME`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from clusterous_core.errors import BadInput

_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)|(?P<dollar>\$))"
)
_WHOLE = re.compile(r"^\s*\$\{?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}?\s*(?:-\s*(?P<minus>\d+))?\s*$")


def parse_params(pairs: list[str] | None, source: str = "--param") -> dict[str, object]:
    """`k=v` pairs; values are YAML scalars, so `worker_count=4` is the integer 4."""
    import yaml

    params: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise BadInput(source, None, "NAME=VALUE with a variable name (letters, digits, _)", pair)
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        params[key] = parsed if isinstance(parsed, (str, int, float, bool)) else value
    return params


class Filler:
    """Fills $variables from the parameters; a missing one is a BadInput naming it and the field."""

    def __init__(self, source: str, params: Mapping[str, object]):
        self.source, self.params = source, dict(params)
        self.notes: list[str] = []

    def value(self, raw: object, where: str, shell: bool = False) -> object:
        if not isinstance(raw, str) or "$" not in raw:
            return raw
        whole = _WHOLE.match(raw)
        if whole and not shell:
            value = self._lookup(whole["name"], where)
            if whole["minus"] is None:
                return value
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadInput(
                    self.source,
                    where,
                    f"an integer in ${whole['name']} (it is used as ${whole['name']} - N)",
                    value,
                )
            return value - int(whole["minus"])

        def replace(match: re.Match) -> str:
            if match["dollar"]:
                return "$$" if shell else "$"  # in a command, $$ is the shell's (its pid)
            name = match["braced"] or match["plain"]
            if shell and name not in self.params:
                return match.group(0)  # the shell's own variable
            return str(self._lookup(name, where))

        return _VARIABLE.sub(replace, raw)

    def _lookup(self, name: str, where: str) -> object:
        if name not in self.params:
            raise BadInput(
                self.source,
                where,
                f"a value for ${name}: pass --param {name}=VALUE (or set it in the cluster file's parameters)",
            )
        return self.params[name]
