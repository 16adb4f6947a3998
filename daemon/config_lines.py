"""Which line of a TOML file sets a given key, so that a validation error can say ``file:line``.

``tomllib`` keeps no positions, so this follows the file's own layout: ``[table]`` and ``[[array]]``
headers (each ``[[array]]`` starting its next item) and ``key = value`` lines. A key written in a way this
does not follow (dotted keys, inline tables, multi-line values that look like keys) has no line, and the
error names its path only.
"""

from __future__ import annotations

import re

Key = tuple[str | int, ...]

_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([^\]]+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
_KEY_LINE = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")


def key_line(text: str, key: Key) -> int | None:
    """The 1-based line that sets ``key`` (or opens its table), or None."""
    items: dict[tuple[str, ...], int] = {}  # array-of-tables path -> index of its latest item
    table: Key = ()
    for number, line in enumerate(text.splitlines(), start=1):
        if match := _ARRAY_HEADER.match(line):
            name = _dotted(match.group(1))
            items[name] = items.get(name, -1) + 1
            table = _resolve(name, items)
        elif match := _TABLE_HEADER.match(line):
            table = _resolve(_dotted(match.group(1)), items)
        elif match := _KEY_LINE.match(line):
            if (*table, match.group(1).strip("\"'")) == key:
                return number
            continue
        else:
            continue
        if table == key:
            return number
    return None


def _dotted(name: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in name.split("."))


def _resolve(name: tuple[str, ...], items: dict[tuple[str, ...], int]) -> Key:
    """A header's path with the current item of each array of tables on the way: sources.reconnect after
    the second [[sources]] is ("sources", 1, "reconnect")."""
    path: list[str | int] = []
    for depth in range(1, len(name) + 1):
        path.append(name[depth - 1])
        if name[:depth] in items:
            path.append(items[name[:depth]])
    return tuple(path)
