"""Text-level helpers for TOML inline tables, and deep equality of parsed TOML data, used
by the migration to edit ``{ ... }`` tables in place and to verify its result."""

from __future__ import annotations

import math
from collections.abc import Sequence

from retrain.config.toml_text import BASIC_RE, UnsafeLayout, end_of_multiline


def split_inline(value: str) -> list[str]:
    """The top-level ``key = value`` entries of an inline table's text (braces included)."""
    body = value.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise UnsafeLayout("an inline table was expected")
    body = body[1:-1]
    entries: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(body):
        ch = body[i]
        if body.startswith('"""', i) or body.startswith("'''", i):
            i = end_of_multiline(body, i + 3, ch)
            continue
        if ch == '"':
            match = BASIC_RE.match(body, i)
            i = match.end() if match else len(body)
            continue
        if ch == "'":
            close = body.find("'", i + 1)
            i = close + 1 if close >= 0 else len(body)
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            entries.append(body[start:i])
            start = i + 1
        i += 1
    entries.append(body[start:])
    return [entry for entry in entries if entry.strip()]


def indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def inline_text(entries: Sequence[str]) -> str:
    return "{ " + ", ".join(entries) + " }" if entries else "{}"


def inline_with_entries(value: str, entries: Sequence[tuple[str, str]]) -> str:
    """An inline table's text with ``key = raw`` entries appended, keeping its spacing style."""
    if not entries:
        return value
    existing = [entry.strip() for entry in split_inline(value)]
    added = [f"{key} = {raw}" for key, raw in entries]
    if not existing:
        return inline_text(added)
    spaced = value.strip()[1:2] in (" ", "\t")
    joined = ", ".join(existing + added)
    return f"{{ {joined} }}" if spaced else f"{{{joined}}}"


def same_values(a: object, b: object) -> bool:
    """Deep equality where NaN equals NaN and a bool never equals an int."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b
