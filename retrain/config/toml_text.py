"""A small scanner for TOML text that keeps positions, which ``tomllib`` does not give.

``scan`` splits a text into statements (key/value, table header, comment, blank line),
each with its line range and the character spans of its key, value and trailing comment.
``migrate-config`` rewrites files with it without touching anything else, and
``key_lines`` uses it so configuration errors can say ``file:line``.
"""

from __future__ import annotations

import bisect
import re
import tomllib
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
    table: KeyPath = ()
    array_counts: dict[KeyPath, int] = {}
    for statement in scan(text)[0]:
        if statement.kind == "array":
            path = _with_array_indices(statement.table[:-1], array_counts, last_is_new=True)
            array_counts[path] = array_counts.get(path, 0) + 1
            table = path + (array_counts[path] - 1,)
        elif statement.kind == "table":
            table = _with_array_indices(statement.table, array_counts)
        elif statement.kind == "keyval":
            lines.setdefault(table + statement.key, statement.first + 1)
            continue
        else:
            continue
        lines.setdefault(table, statement.first + 1)
    return lines


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
