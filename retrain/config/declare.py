"""How one setting is declared (``setting``) and the limits every integer setting shares.
``retrain/config/schema.py`` declares every setting with it."""

from __future__ import annotations

from dataclasses import field
from typing import Any

# A TOML value as tomllib returns it (tables and arrays nest).
TomlValue = Any


def setting(
    default: object,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    plugin_kind: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    secret: bool = False,
    flag: str | None = None,
    toml_key: str | None = None,
    aliases: tuple[str, ...] = (),
    component_setting: bool = False,
    input_path: bool = False,
) -> Any:
    """Declare one setting.

    ``plugin_kind`` makes the value a registry name: a built-in of that kind or (for
    kinds that accept plugins) a dotted path. ``flag`` claims a short CLI flag for a
    key whose name is not unique (``--model`` for ``[model].model``). ``toml_key`` is the
    key as written in TOML when it is not a Python identifier (``[resume] from``).
    ``aliases`` are older TOML spellings still accepted. ``component_setting`` marks a
    setting only some backends or engines read (they list it in their capabilities'
    ``reads``): setting it when neither the chosen backend nor engine reads it is an error.
    ``input_path`` marks a file or folder the run reads examples from (retrain/inputs.py
    pins its path and content for a resume).
    ``{choices}`` in ``help`` stands for the valid values (``choices`` or the registry's
    built-ins of ``plugin_kind``), so no help text lists them by hand.
    """
    metadata = {"help": help, "choices": choices, "plugin_kind": plugin_kind, "ge": ge, "gt": gt, "le": le, "lt": lt,
                "secret": secret, "flag": flag, "toml_key": toml_key, "aliases": aliases,
                "component_setting": component_setting, "input_path": input_path}
    if isinstance(default, (list, dict)):
        frozen_default = default
        return field(default_factory=lambda: type(frozen_default)(frozen_default), metadata=metadata)
    return field(default=default, metadata=metadata)


# Integers larger than this are rejected everywhere: they are always a typo and would
# overflow the int64 tensors and JSON consumers downstream.
MAX_INT = 2**53
