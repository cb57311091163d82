"""Plugin parameters: the value a stage receives for its params table.

A stage registered with ``retrain.registry.register(kind, params=SomeDataclass)`` gets an
instance of that dataclass, built after checking every key, type and bound of its table
like any other config (all problems reported together); a stage registered with
``params_section`` reads one of the config's own sections instead (the built-in GTPO,
HICRA and SEPA stages). ``describe_params`` lists what a plugin declares, for
``retrain plugins``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping

from retrain.config.schema import Config
from retrain.config.values import did_you_mean, fits_type
from retrain.errors import ConfigError, ConfigIssue
from retrain.registry import PluginSignatureError, ResolvedPlugin, plugin_spec


def check_params(
    resolved: ResolvedPlugin, params: Mapping[str, object], section: str, config: Config | None = None
) -> object:
    """The value a stage receives as its ``params``, built the same way for a built-in and
    a plugin.

    ``params`` is the stage's table, read from ``[section]``. A stage registered with
    ``params_section`` (the built-in GTPO, HICRA and SEPA stages) takes its values from
    that section of ``config`` instead, and the table must then be empty. A stage
    registered with a ``params`` dataclass gets an instance of it, built after checking
    every key, type and bound (all problems reported together as a ``ConfigError``); an
    undeclared plugin gets the table as a read-only mapping, and an undeclared built-in
    accepts no table at all.
    """
    spec = resolved.spec if resolved.spec is not None else plugin_spec(resolved.obj)
    if spec is not None and spec.params_section:
        if params:
            raise ConfigError(ConfigIssue(
                "", section, next(iter(params)),
                f"the {resolved.kind} '{resolved.name}' reads its parameters from [{spec.params_section}]",
                f"set them in [{spec.params_section}] and remove [{section}]",
            ))
        if config is None:
            raise TypeError(f"check_params needs the config to read [{spec.params_section}] for '{resolved.name}'")
        params, section = dataclasses.asdict(getattr(config, spec.params_section)), spec.params_section
    if spec is None or spec.params is None:
        if resolved.builtin and params:
            raise ConfigError(ConfigIssue(
                "", section, next(iter(params)),
                f"the built-in {resolved.kind} '{resolved.name}' takes no parameters table",
                "remove the table; built-ins read their own sections (e.g. [gtpo] beta, [hicra] alpha)",
            ))
        return types.MappingProxyType(dict(params))
    return build_params(spec.params, params, section, resolved.name)


def build_params(declared: type, params: Mapping[str, object], section: str, plugin_name: str) -> object:
    """Check ``params`` against the dataclass ``declared`` and build it."""
    fields = {f.name: f for f in dataclasses.fields(declared) if f.init}
    hints = typing.get_type_hints(declared)
    issues = []
    for key, value in params.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            issues.append(ConfigIssue("", section, key, f"'{plugin_name}' has no parameter '{key}'",
                                      did_you_mean(key, fields, f"its parameters are: {known}")))
            continue
        problem = type_problem(hints[key], value)
        if problem is None:
            problem = bounds_problem(fields[key], value)
        if problem is not None:
            issues.append(ConfigIssue("", section, key, problem[0], problem[1]))
    for key, f in fields.items():
        if key not in params and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            issues.append(ConfigIssue("", section, key, f"'{plugin_name}' requires this parameter",
                                      f"set {key} in [{section}]"))
    if issues:
        raise ConfigError(issues)
    values = {key: (float(value) if hints[key] is float and isinstance(value, int) else value)
              for key, value in params.items()}
    try:
        return declared(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(ConfigIssue("", section, "", f"'{plugin_name}' rejected its parameters: {exc}",
                                      "fix the values in the table")) from exc


def _type_name(declared: object) -> str:
    if isinstance(declared, type):
        return declared.__name__
    return str(declared).replace("typing.", "")


def type_problem(declared: object, value: object) -> tuple[str, str] | None:
    """(problem, fix) when ``value`` (as read from TOML) does not fit ``declared``."""
    if _fits(declared, value):
        return None
    if typing.get_origin(declared) is typing.Literal:
        listed = ", ".join(repr(choice) for choice in typing.get_args(declared))
        return (f"{value!r} is not a valid choice"[:160], f"choose one of {listed}")
    return (f"expected {_type_name(declared)}, got {type(value).__name__} {value!r}"[:160],
            f"write a value of type {_type_name(declared)}")


def _fits(declared: object, value: object) -> bool:
    try:
        return fits_type(declared, value)
    except TypeError as exc:
        raise PluginSignatureError(
            f"{exc} in a plugin params dataclass; use bool, int, float, str, Literal[...], list[...], "
            "tuple[...], dict[str, ...] or X | None"
        ) from exc


def bounds_problem(declared_field: dataclasses.Field, value: object) -> tuple[str, str] | None:
    """Bounds declared with ``retrain.plugin_api.setting(..., ge=, gt=, le=, lt=, choices=)``."""
    meta = declared_field.metadata
    if meta.get("choices") and value not in meta["choices"]:
        listed = ", ".join(repr(choice) for choice in meta["choices"])
        return (f"{value!r} is not a valid choice", f"choose one of {listed}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    checks = (("ge", lambda bound: value >= bound, ">="), ("gt", lambda bound: value > bound, ">"),
              ("le", lambda bound: value <= bound, "<="), ("lt", lambda bound: value < bound, "<"))
    for key, holds, symbol in checks:
        bound = meta.get(key)
        if bound is not None and not holds(bound):
            return (f"{value} is out of range", f"use a value {symbol} {bound:g}")
    return None


def describe_params(declared: type | None) -> list[dict[str, object]]:
    """The declared parameters of a plugin: name, type, default and help."""
    if declared is None:
        return []
    hints = typing.get_type_hints(declared)
    described = []
    for f in dataclasses.fields(declared):
        if f.default is not dataclasses.MISSING:
            default: object = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        described.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default,
                          "help": f.metadata.get("help", "")})
    return described


