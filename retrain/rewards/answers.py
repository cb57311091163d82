"""Final-answer extraction and light normalization, shared by rewards and data sources.

Competition-math solutions (hendrycks MATH) and most math-tuned models mark the final
answer with ``\\boxed{...}``; the answer is the content of the *last* box, with nested
braces (``\\boxed{\\frac{1}{2}}``) and escaped braces (``\\boxed{\\{1, 2\\}}``) kept
intact. ``\\fbox{...}`` and the brace-less form ``\\boxed 5`` appear in MATH too.
"""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_DOLLAR_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_WHITESPACE = re.compile(r"\s+")


def _box_starts(text: str) -> list[tuple[int, int]]:
    """(start of the command, index just after its name) for every box command, in order."""
    starts = []
    for command in _BOX_COMMANDS:
        position = text.find(command)
        while position != -1:
            end = position + len(command)
            # "\boxedx" is some other command; only a brace, space or end of the name counts.
            if end >= len(text) or not text[end].isalpha():
                starts.append((position, end))
            position = text.find(command, end)
    return sorted(starts)


def _braced_content(text: str, open_index: int) -> str | None:
    """The text between ``text[open_index] == "{"`` and its matching ``}``, or None when
    the braces never balance (a truncated completion)."""
    depth = 0
    index = open_index
    while index < len(text):
        char = text[index]
        if char == "\\":
            # An escaped character (\{, \}, \\) never opens or closes a group.
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1:index]
        index += 1
    return None


def _box_content(text: str, name_end: int) -> str | None:
    index = name_end
    while index < len(text) and text[index] == " ":
        index += 1
    if index < len(text) and text[index] == "{":
        return _braced_content(text, index)
    if index == name_end:
        return None
    # "\boxed 5": the argument runs to the next whitespace or math delimiter.
    match = re.match(r"[^\s$]+", text[index:])
    return match.group(0) if match else None


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    None when there is no box, or when the last one is never closed.

    >>> last_boxed(r"so $x = \\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    """
    starts = _box_starts(text)
    if not starts:
        return None
    _, name_end = starts[-1]
    return _box_content(text, name_end)


def final_answer(text: str) -> str:
    """The answer a completion commits to: its last box if it has one, else the whole
    text stripped (short-answer tasks such as arithmetic answer with the bare value)."""
    boxed = last_boxed(text)
    return boxed if boxed is not None else text.strip()


def normalize_answer(answer: str) -> str:
    """Light normalization for exact comparison.

    Removes all whitespace, a trailing period, and wrapping math delimiters (``$...$``,
    ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``), repeatedly, so ``" $7$. "`` and ``"7"``
    compare equal. Case and LaTeX spelling are kept: ``\\frac12`` and ``0.5`` stay
    different (the ``math`` reward compares symbolically).
    """
    text = _WHITESPACE.sub("", answer)
    previous = None
    while text != previous:
        previous = text
        text = text.rstrip(".")
        for opening, closing in _DOLLAR_WRAPPERS:
            if len(text) >= len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing):
                text = text[len(opening):len(text) - len(closing)]
                break
    return text
