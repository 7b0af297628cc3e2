"""How results reach people (rich tables on stdout) and scripts (--json)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    Console(soft_wrap=True).print(table)


def say(message: str) -> None:
    """A progress or result line for people, on stderr so --json output stays clean. Plain text:
    rich would only wrap it (the terminal does) and turn `:name:` in file names into emoji, and
    importing it costs a small `put` a tenth of rsync's whole time."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
