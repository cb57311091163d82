"""A small scanner for TOML text that keeps positions, which ``tomllib`` does not give.

``scan`` splits a text into statements (key/value, table header, comment, blank line),
each with its line range and the character spans of its key, value and trailing comment.
``migrate-config`` rewrites files with it without touching anything else, ``key_lines``
uses it so configuration errors can say ``file:line``, and ``first_redefinition`` finds
both lines of a key or table that a file defines twice.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\\n]|\\.)*"'
_LITERAL = r"'[^'\n]*'"
_PART = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_DOTTED = rf"{_PART}(?:[ \t]*\.[ \t]*{_PART})*"
HEADER_RE = re.compile(rf"[ \t]*(\[\[|\[)[ \t]*({_DOTTED})[ \t]*\]")
KEY_RE = re.compile(rf"[ \t]*({_DOTTED})[ \t]*=[ \t]*")
PART_RE = re.compile(_PART)
BASIC_RE = re.compile(_BASIC)

# Marks the path of an [[array]] element so it never equals a plain table path.
ARRAY_ELEMENT = "[]"


@dataclass(frozen=True)
class Statement:
    """One logical TOML line: spans are offsets into the whole text."""

    kind: str  # "blank", "comment", "table", "array", "keyval"
    first: int  # 0-based first line
    last: int  # 0-based last line (a multi-line value spans several)
    table: tuple[str, ...]  # enclosing table of a keyval; own path for a header
    key: tuple[str, ...] = ()
    key_span: tuple[int, int] = (0, 0)
    value_span: tuple[int, int] = (0, 0)
    comment_span: tuple[int, int] | None = None


def key_parts(dotted: str) -> tuple[str, ...]:
    parts = []
    for match in PART_RE.finditer(dotted):
        part = match.group(0)
        if part.startswith('"'):
            part = tomllib.loads(f"k = {part}")["k"]  # resolves escapes like \u00e9
        elif part.startswith("'"):
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


def end_of_multiline(text: str, start: int, quote: str) -> int:
    """Offset just past the closing delimiter of a multi-line string opened before ``start``."""
    i = start
    while True:
        close = text.find(quote * 3, i)
        if close < 0:
            return len(text)
        if quote == '"':
            escape = text.find("\\", i, close)
            if escape >= 0:
                i = escape + 2
                continue
        end = close + 3
        # Up to two quotes right before the delimiter belong to the content.
        extra = 0
        while extra < 2 and text.startswith(quote, end):
            end += 1
            extra += 1
        return end


def scan_value(text: str, i: int) -> tuple[int, tuple[int, int] | None, int]:
    """From the start of a value: (end of the value, its trailing comment span, end of statement)."""
    depth = 0
    value_end = i
    n = len(text)
    while i < n:
        ch = text[i]
        if text.startswith('"""', i) or text.startswith("'''", i):
            i = value_end = end_of_multiline(text, i + 3, ch)
            continue
        if ch == '"':
            match = BASIC_RE.match(text, i)
            i = value_end = match.end() if match else n
            continue
        if ch == "'":
            close = text.find("'", i + 1)
            i = value_end = close + 1 if close >= 0 else n
            continue
        if ch == "#":
            eol = text.find("\n", i)
            eol = n if eol < 0 else eol
            if depth == 0:
                comment_end = eol - 1 if eol > i and text[eol - 1] == "\r" else eol
                return value_end, (i, comment_end), min(eol + 1, n)
            i = eol
            continue
        if ch == "\n" and depth == 0:
            return value_end, None, i + 1
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch not in " \t\r\n":
            value_end = i + 1
        i += 1
    return value_end, None, n


def line_start_offsets(text: str) -> list[int]:
    """Offsets where lines start; only "\n" ends a TOML line (unlike ``str.splitlines``)."""
    starts = [0] + [match.end() for match in re.finditer("\n", text)]
    if starts[-1] == len(text) and len(starts) > 1:
        starts.pop()
    return starts


def split_lines(text: str) -> list[str]:
    """The lines of ``text`` with their endings, split on "\n" only."""
    if not text:
        return []
    starts = line_start_offsets(text)
    return [text[start:end] for start, end in zip(starts, starts[1:] + [len(text)])]


def scan(text: str) -> tuple[list[Statement], list[int]]:
    """Split TOML text into statements; also return the offset where each line starts."""
    line_starts = line_start_offsets(text)

    def line_at(offset: int) -> int:
        return bisect.bisect_right(line_starts, offset) - 1

    statements: list[Statement] = []
    table: tuple[str, ...] = ()
    i = 0
    n = len(text)
    while i < n:
        eol = text.find("\n", i)
        next_line = n if eol < 0 else eol + 1
        stripped = text[i:next_line].strip()
        line = line_at(i)
        if not stripped:
            statements.append(Statement("blank", line, line, table))
            i = next_line
            continue
        if stripped.startswith("#"):
            statements.append(Statement("comment", line, line, table))
            i = next_line
            continue
        header = HEADER_RE.match(text, i)
        if header and stripped.startswith("["):
            path = key_parts(header.group(2))
            if header.group(1) == "[[":
                table = path + (ARRAY_ELEMENT,)
                statements.append(Statement("array", line, line, table))
            else:
                table = path
                statements.append(Statement("table", line, line, table))
            i = next_line
            continue
        key = KEY_RE.match(text, i)
        if key is None:
            raise UnsafeLayout(f"line {line + 1} is not a key, a table header or a comment")
        value_end, comment, end = scan_value(text, key.end())
        statements.append(
            Statement(
                "keyval", line, line_at(max(end - 1, i)), table, key_parts(key.group(1)),
                key.span(1), (key.end(), value_end), comment,
            )
        )
        i = end
    return statements, line_starts


class UnsafeLayout(Exception):
    """The text has a layout this module does not rewrite; becomes a ConfigError."""


# ---------------------------------------------------------------------------------------
# Key lines for error messages

KeyPath = tuple[object, ...]


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each key path of a parsed TOML text to its 1-based line.

    Paths are tuples of keys; an element of an array of tables contributes its index,
    e.g. ``("campaign", "conditions", 0, "name")``. Table headers map to their own line.
    ``text`` must be valid TOML (the loader parses it first).
    """
    lines: dict[KeyPath, int] = {}
    for statement, path in _paths(scan(text)[0]):
        lines.setdefault(path, statement.first + 1)
    return lines


def _paths(statements: list[Statement]) -> Iterator[tuple[Statement, KeyPath]]:
    """Each table header and key/value statement with its full path; the path of an
    ``[[array]]`` header ends with the index of the element it starts."""
    table: KeyPath = ()
    array_counts: dict[KeyPath, int] = {}
    for statement in statements:
        if statement.kind == "array":
            path = _with_array_indices(statement.table[:-1], array_counts, last_is_new=True)
            array_counts[path] = array_counts.get(path, 0) + 1
            table = path + (array_counts[path] - 1,)
        elif statement.kind == "table":
            table = _with_array_indices(statement.table, array_counts)
        elif statement.kind == "keyval":
            yield statement, table + statement.key
            continue
        else:
            continue
        yield statement, table


def _with_array_indices(path: tuple[str, ...], array_counts: dict[KeyPath, int], last_is_new: bool = False) -> KeyPath:
    """``[campaign.conditions.overrides]`` belongs to the latest ``[[campaign.conditions]]``."""
    result: KeyPath = ()
    for number, part in enumerate(path, start=1):
        result = result + (part,)
        if result in array_counts and not (last_is_new and number == len(path)):
            result = result + (array_counts[result] - 1,)
    return result


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path`` or, failing that, of its nearest enclosing table."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


# ---------------------------------------------------------------------------------------
# Keys and tables defined twice

# How tomllib's errors about a key or table defined twice begin.
TOMLLIB_REDEFINED = ("Cannot overwrite", "Cannot declare", "Cannot redefine", "Cannot mutate")

# How a path was first defined, as the message about its second definition says it.
_FIRST_DEFINED = {"key": "set", "table": "declared as a table", "dotted": "set by the dotted key",
                  "array": "declared as an array of tables"}


@dataclass(frozen=True)
class Redefinition:
    """A key or table defined a second time: what it is, where, and where it was first.

    Kinds: "key" (a key/value), "table" (a header), "dotted" (a table made by a dotted
    key such as ``options.x = 1``) and, first only, "array" (an ``[[array]]`` header)."""

    path: KeyPath
    kind: str
    line: int
    first_kind: str
    first_line: int

    def describe(self) -> tuple[str, str, str, str]:
        """(section, key, problem, fix) for a configuration error."""
        dotted = _dotted(self.path)
        section, key = (_dotted(self.path[:-1]), str(self.path[-1])) if self.kind == "key" else (dotted, "")
        kinds = {self.kind, self.first_kind}
        how = "declared" if kinds == {"table"} else _FIRST_DEFINED[self.first_kind]
        fix = "keep one of them"
        if kinds == {"table"}:
            fix = f"merge them into one [{dotted}] section"
        elif kinds == {"table", "dotted"}:
            fix = f"write the keys of [{dotted}] in one place: under its header or as dotted keys"
        noun = "key" if self.kind == "key" else "table"
        return section, key, f"duplicate {noun}: also {how} on line {self.first_line}", fix


def _dotted(path: KeyPath) -> str:
    """``("campaign", "conditions", 0)`` as ``campaign.conditions[0]``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")


def first_redefinition(text: str) -> Redefinition | None:
    """The first key or table that ``text`` defines twice (what ``tomllib`` refuses with
    "Cannot overwrite a value", "Cannot declare ... twice" and the like), or None.

    A header repeating a table made by dotted keys is reported as the key both set when
    its section sets one again, otherwise as the table."""
    try:
        statements = scan(text)[0]
    except UnsafeLayout:
        return None
    seen: dict[KeyPath, tuple[str, int]] = {}
    pending: Redefinition | None = None
    for statement, path in _paths(statements):
        kind, line = {"keyval": "key", "array": "array"}.get(statement.kind, "table"), statement.first + 1
        if pending is not None and kind != "key":
            return pending
        defined = path[:-1] if kind == "array" else path
        clash = _clash(seen, defined, statement)
        if clash is not None:
            found = Redefinition(clash[0], clash[1], line, *seen[clash[0]])
            if (found.kind, found.first_kind) != ("table", "dotted"):
                return found
            pending = found
        made = range(len(path) - len(statement.key) + 1, len(path)) if kind == "key" else ()
        for end in made:
            seen.setdefault(path[:end], ("dotted", line))
        seen.setdefault(defined, (kind, line))
    return pending


def _clash(seen: dict[KeyPath, tuple[str, int]], path: KeyPath, statement: Statement) -> tuple[KeyPath, str] | None:
    """The path defined before that this statement defines again, and how this one defines it."""
    if statement.kind == "keyval":
        if path in seen:
            return path, "key"
        # The tables a dotted key makes may exist before only as tables made by dotted keys.
        made = (path[:end] for end in range(len(path) - len(statement.key) + 1, len(path)))
        table = next((table for table in made if seen.get(table, ("dotted",))[0] != "dotted"), None)
        return (table, "dotted") if table is not None else None
    if path in seen and not (statement.kind == "array" and seen[path][0] == "array"):
        return path, "table"
    # A header cannot open a table inside a value.
    table = next((path[:end] for end in range(1, len(path)) if seen.get(path[:end], ("",))[0] == "key"), None)
    return (table, "table") if table is not None else None
