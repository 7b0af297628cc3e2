"""Elastic node groups' bounds as the user writes them (docs/elastic.md).

A group may give `min` and `max` (`node_groups.G.min/max`, `parameters.worker_min/worker_max`,
or `--workers MIN..MAX`); `count` stays the starting size and `min` defaults to 0 once bounds are
given. The autoscaler keeps the group within them; the controller has none.
"""

from __future__ import annotations

import re
from typing import Any

from clusterous_core.errors import BadInput

MAX_GROUP_SIZE = 1000
WORKERS_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")


def parse_workers(value: Any) -> tuple[int, int] | None:
    """`--workers N` (None: no bounds) or `--workers MIN..MAX` (the bounds); anything else is bad input."""
    if value is None or isinstance(value, int):
        return None
    text = str(value)
    if text.strip().isdigit():
        return None
    match = WORKERS_RANGE.match(text)
    if not match:
        raise BadInput(
            "--workers", None, "a number of workers (e.g. 4) or bounds MIN..MAX (e.g. 0..10)", value
        )
    low, high = int(match.group(1)), int(match.group(2))
    if high > MAX_GROUP_SIZE:
        raise BadInput("--workers", None, f"a MAX of at most {MAX_GROUP_SIZE}", value)
    if low > high:
        raise BadInput("--workers", None, f"MIN..MAX with MIN at most MAX ({high})", value)
    return low, high


def check_bounds(
    source: str, where: str, count: int, low: int | None, high: int | None
) -> tuple[int | None, int | None]:
    """(min, max) of a group, or (None, None) for a fixed one. `where` is the flag (`--workers`)
    or the fields' common prefix (`node_groups.worker.`, `parameters.worker_`)."""
    if low is None and high is None:
        return None, None

    def bad(field: str, expected: str, got: object) -> BadInput:
        if where.startswith("--"):
            return BadInput(where, None, expected, got)
        return BadInput(source, where + field, expected, got)

    if high is None:
        raise bad("max", f"a maximum ({where}max) as well, since {where}min is given", None)
    low = 0 if low is None else low  # bounds given: the group may shrink to zero
    if low > high:
        raise bad("min", f"at most max ({high})", low)
    if not low <= count <= high:
        raise bad("count", f"a starting size between min and max ({low}..{high})", count)
    return low, high


def no_controller_bounds(source: str, data: dict) -> None:
    """The controller is one k3s server holding the shared volume: it has no size to bound."""
    for key in ("controller_count", "controller_min", "controller_max"):
        if key in data:
            raise BadInput(
                source, key, "no bounds on the controller (always one instance; bounds go on node groups)"
            )
    groups = data.get("node_groups")
    controller = groups.get("controller") if isinstance(groups, dict) else None
    if isinstance(controller, dict):
        for key in ("min", "max"):
            if key in controller:
                raise BadInput(
                    source,
                    f"node_groups.controller.{key}",
                    "no bounds on the controller (always one instance; bounds go on node groups)",
                )
