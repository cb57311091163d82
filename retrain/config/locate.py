"""Find the line of every key in a TOML text, so errors can say ``file:line``.

``tomllib`` gives values but no positions, so this scans the text once: it follows
``[table]`` / ``[[array]]`` headers and ``key = value`` lines (dotted keys included),
and skips the insides of multi-line strings and arrays.
"""

from __future__ import annotations

import re

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\]|\\.)*"'
_LITERAL = r"'[^']*'"
_PART = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER = re.compile(rf"^\s*(\[\[|\[)\s*({_DOTTED})\s*\]\]?")
_KEY = re.compile(rf"^\s*({_DOTTED})\s*=")
_SPLIT = re.compile(rf"\s*({_PART})\s*(?:\.|$)")

Path = tuple[object, ...]


def _parts(dotted: str) -> list[str]:
    parts = []
    for match in _SPLIT.finditer(dotted):
        part = match.group(1)
        if part[:1] in "\"'":
            part = part[1:-1]
        parts.append(part)
    return parts


def _open_brackets_and_strings(line: str, in_string: str | None) -> tuple[int, str | None]:
    """Net bracket depth change of a line and the multi-line string still open at its end."""
    depth = 0
    i = 0
    while i < len(line):
        if in_string is not None:
            end = line.find(in_string, i)
            if end < 0:
                return depth, in_string
            i = end + len(in_string)
            in_string = None
            continue
        ch = line[i]
        if ch == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            in_string = line[i : i + 3]
            i += 3
            continue
        if ch == '"':
            match = re.match(_BASIC, line[i:])
            i += match.end() if match else len(line)
            continue
        if ch == "'":
            end = line.find("'", i + 1)
            i = end + 1 if end >= 0 else len(line)
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        i += 1
    return depth, in_string


def key_lines(text: str) -> dict[Path, int]:
    """Map each key path to its 1-based line.

    Paths are tuples of keys; an element of an array of tables contributes its index,
    e.g. ``("campaign", "conditions", 0, "name")``. Table headers map to their own line.
    """
    lines: dict[Path, int] = {}
    table: Path = ()
    array_counts: dict[Path, int] = {}
    depth = 0
    in_string: str | None = None
    # TOML lines end only at \n (or \r\n); str.splitlines would also split on U+2028 etc.
    for number, line in enumerate(text.split("\n"), start=1):
        if in_string is None and depth == 0:
            header = _HEADER.match(line)
            if header:
                path = tuple(_parts(header.group(2)))
                if header.group(1) == "[[":
                    index = array_counts.get(path, 0)
                    array_counts[path] = index + 1
                    table = path + (index,)
                else:
                    table = _with_array_indices(path, array_counts)
                lines.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                lines.setdefault(table + tuple(_parts(key.group(1))), number)
                line = line[key.end() :]
        change, in_string = _open_brackets_and_strings(line, in_string)
        depth = max(0, depth + change)
    return lines


def _with_array_indices(path: Path, array_counts: dict[Path, int]) -> Path:
    """``[campaign.conditions.overrides]`` belongs to the latest ``[[campaign.conditions]]``."""
    result: Path = ()
    for part in path:
        result = result + (part,)
        if result in array_counts:
            result = result + (array_counts[result] - 1,)
    return result


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path`` or, failing that, of its nearest enclosing table."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None
