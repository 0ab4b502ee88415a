"""What the commands print: tables for people on stdout, ``--json`` for scripts, and
messages, errors and progress on stderr (so that stdout stays the data)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = [
    "cell",
    "emit",
    "emit_json",
    "err",
    "fields",
    "out",
    "say",
    "table",
    "warn",
]

_WIDTH_OFF_TERMINAL = 200
"""Columns for tables written to a pipe or a file (unless ``COLUMNS`` says otherwise)."""


def _console(*, stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _WIDTH_OFF_TERMINAL
    return console


def out() -> Console:
    """stdout, for the data (made per call: tests and pipes swap ``sys.stdout``)."""
    return _console(stderr=False)


def err() -> Console:
    """stderr, for messages and progress."""
    return _console(stderr=True)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def emit(*renderables: Any) -> None:
    console = out()
    for renderable in renderables:
        console.print(renderable)


def say(message: str, style: str | None = None) -> None:
    err().print(Text(message, style=style or ""))


def warn(message: str) -> None:
    say(message, "yellow")


def cell(value: Any) -> Text:
    """One value as table text, never interpreted as markup."""
    if isinstance(value, Text):
        return value
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, list | tuple):
        return Text(", ".join(str(v) for v in value) if value else "-")
    if isinstance(value, dict):
        return Text(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))
    return Text(str(value))


def table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None
) -> Table:
    grid = Table(title=title, title_justify="left", header_style="bold", box=None)
    for name in columns:
        grid.add_column(name, overflow="fold")
    for row in rows:
        grid.add_row(*(cell(v) for v in row))
    return grid


def fields(pairs: Sequence[tuple[str, Any]] | Mapping[str, Any]) -> Table:
    """``name  value`` lines; a value of None is left out."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in items:
        if value is not None:
            grid.add_row(name, cell(value))
    return grid
