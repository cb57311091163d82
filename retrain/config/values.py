"""Checking single setting values: exact TOML types, bounds, choices, and parsing values
given as text on the command line or in environment variables."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Iterable

from retrain.config.schema import FieldSpec
from retrain.registry_names import is_dotted_path


def toml_type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _expected_name(declared: object) -> str:
    names = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}
    if declared in names:
        return names[declared]
    origin = getattr(declared, "__origin__", None)
    if origin is list:
        (item,) = declared.__args__  # type: ignore[attr-defined]
        return f"an array of {_expected_name(item).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict or declared is dict:
        return "a table"
    return str(declared)


def _type_fix(declared: object, value: object) -> str:
    """A concrete suggestion for the most common type slips."""
    if isinstance(value, str):
        text = value.strip()
        if declared is bool and text.lower() in ("true", "false"):
            return f"write {text.lower()} without quotes"
        if declared in (int, float):
            try:
                number = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                number = None
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                return f"write {text} without quotes"
    if declared is int and isinstance(value, float) and value.is_integer():
        return f"write {int(value)} (an integer, no decimal point)"
    if declared is int and isinstance(value, float):
        return "write a whole number"
    if declared is bool and isinstance(value, int) and not isinstance(value, bool):
        return "write true or false"
    if declared is str:
        return f"quote it: \"{value}\"" if not isinstance(value, (list, dict)) else "write a quoted string"
    return f"write {_expected_name(declared)}"


def fits_type(declared: object, value: object) -> bool:
    """Whether a value read from TOML has the declared type, exactly: an int is accepted
    for a float, nothing else is coerced, and a bool is never an int."""
    if declared is typing.Any or declared is object:
        return True
    if declared is bool:
        return isinstance(value, bool)
    if declared is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if declared is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if declared is str:
        return isinstance(value, str)
    if declared is type(None):
        return value is None
    origin = typing.get_origin(declared)
    arguments = typing.get_args(declared)
    if origin is typing.Literal:
        return any(value == choice and type(value) is type(choice) for choice in arguments)
    if origin in (typing.Union, types.UnionType):
        return any(fits_type(argument, value) for argument in arguments)
    if origin is list or declared is list:
        return isinstance(value, list) and (not arguments or all(fits_type(arguments[0], item) for item in value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return all(fits_type(arguments[0], item) for item in value)
        return len(arguments) == len(value) and all(fits_type(a, item) for a, item in zip(arguments, value))
    if origin is dict or declared is dict:
        return isinstance(value, dict) and (not arguments or all(fits_type(arguments[1], v) for v in value.values()))
    if dataclasses.is_dataclass(declared):
        return isinstance(value, declared)  # type: ignore[arg-type]
    raise TypeError(f"type {declared!r} is not supported")


def check_value(spec: FieldSpec, value: object) -> list[tuple[str, str]]:
    """Problems with one value as (problem, fix) pairs; empty when the value is valid."""
    if not fits_type(spec.type, value):
        shown = _shown(value)
        return [(f"expected {_expected_name(spec.type)}, got {toml_type_name(value)} {shown}", _type_fix(spec.type, value))]
    problems: list[tuple[str, str]] = []
    numbers = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for number in numbers:
        problem = _bounds_problem(spec, number)
        if problem:
            problems.append(problem)
            break
    if isinstance(value, str):
        problems.extend(_name_problems(spec, value))
    return problems


def _shown(value: object) -> str:
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, (bool, list, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return f"({text[:60]}{'…' if len(text) > 60 else ''})"


def _bounds_problem(spec: FieldSpec, number: float) -> tuple[str, str] | None:
    if isinstance(number, float) and not math.isfinite(number):
        return (f"must be a finite number, got {number}", "write a finite value")
    if isinstance(number, int) and abs(number) > 2**53:
        return (f"{number} is far too large", "write a realistic value")
    low = _describe_bounds(spec)
    if spec.ge is not None and number < spec.ge or spec.gt is not None and number <= spec.gt:
        return (f"{number} is out of range", f"use a value {low}")
    if spec.le is not None and number > spec.le or spec.lt is not None and number >= spec.lt:
        return (f"{number} is out of range", f"use a value {low}")
    return None


def _describe_bounds(spec: FieldSpec) -> str:
    parts = []
    if spec.ge is not None:
        parts.append(f">= {spec.ge:g}")
    if spec.gt is not None:
        parts.append(f"> {spec.gt:g}")
    if spec.le is not None:
        parts.append(f"<= {spec.le:g}")
    if spec.lt is not None:
        parts.append(f"< {spec.lt:g}")
    return " and ".join(parts)


def _name_problems(spec: FieldSpec, value: str) -> list[tuple[str, str]]:
    allowed = spec.allowed_names()
    if not allowed or value in allowed:
        return []
    if spec.accepts_dotted_path and is_dotted_path(value):
        return []  # a plugin: resolved (and checked) by the registry before the run starts
    fix = did_you_mean(value, [name for name in allowed if name], f"choose one of {spec.listed_choices()}")
    return [(f"{value!r} is not a valid choice", fix)]


def normalize(spec: FieldSpec, value: object) -> object:
    """Store ints given for float settings as floats, so equal configs compare equal."""
    if spec.type is float:
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def parse_text_value(raw: str, declared: object) -> object:
    """Parse a value given on the command line or in an environment variable.

    The text is read as a TOML literal (``1e-4`` is a float, ``true`` a bool,
    ``["a", "b"]`` an array) and then type-checked like a file value. A string setting
    takes the text as-is unless it is quoted, so ``--model Qwen/Qwen3-4B`` needs no
    quotes; a list of strings also accepts a comma list (``plugins,more_plugins``).
    """
    text = raw.strip()
    if declared is str and not (text[:1] in "\"'" and text[-1:] == text[:1] and len(text) >= 2):
        return raw
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        pass
    if getattr(declared, "__origin__", None) is list and declared.__args__ == (str,):  # type: ignore[attr-defined]
        return [part.strip() for part in text.split(",") if part.strip()]
    return raw


def did_you_mean(word: str, candidates: Iterable[str], otherwise: str) -> str:
    """"did you mean 'x'?" when ``word`` is a typo of a candidate, else ``otherwise``.

    A typo is a slip in writing a name, not another name that looks alike: ``word`` is
    one when it equals the candidate once case and separators (``-``, ``_``, ``.``, space)
    are ignored, or when it is at most a few one-character edits away (insert, delete,
    replace, or swap two neighbours; each counts one): one edit for names under ten
    characters, a fifth of the length for longer ones. So ``gtpo_sep``, ``GTPO-SEPA`` and
    ``maxrll`` get a suggestion, and ``delight_sepa`` (another algorithm) does not. Every
    candidate at the smallest distance is named, in the candidates' order.
    """
    folded = _fold(word)
    best: dict[str, int] = {}
    named: set[str] = set()  # "--training.lr" and "--training-lr" are one suggestion
    for candidate in candidates:
        target = _fold(candidate)
        distance = _edit_distance(folded, target, limit=max(1, len(target) // 5))
        if distance is not None and target not in named:
            named.add(target)
            best[candidate] = distance
    if not best:
        return otherwise
    closest = min(best.values())
    return "did you mean " + " or ".join(f"'{name}'" for name, d in best.items() if d == closest) + "?"


def _fold(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_").replace(" ", "_")


def _edit_distance(a: str, b: str, limit: int) -> int | None:
    """The optimal-string-alignment distance of ``a`` and ``b`` when it is at most ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return None
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], before[j - 2] + 1)
        before, previous = previous, row
    return previous[-1] if previous[-1] <= limit else None
