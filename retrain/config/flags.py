"""CLI flags for every setting, derived from the schema, and the parser for run command lines.

Each setting gets ``--section.key`` and ``--section-key`` (kebab case); a key whose name
is unique across sections also gets the bare ``--key`` (``--lr``, ``--batch-size``), and
a few settings claim a short name of their own (``--model``, ``--resume``). Repeatable
``--algorithm-param``, ``--advantage-param``, ``--transform-param`` and ``--backend-opt``
take ``key=value`` and fill the plugin and backend tables.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from retrain.config.loader import Override
from retrain.config.schema import ALL_FIELDS, FieldSpec
from retrain.config.values import did_you_mean
from retrain.errors import UsageError

# Flag -> table setting it fills with key=value entries.
TABLE_FLAGS: dict[str, tuple[str, str]] = {
    "--algorithm-param": ("algorithm", "params"),
    "--advantage-param": ("algorithm", "advantage_params"),
    "--transform-param": ("algorithm", "transform_params"),
    "--backend-opt": ("backend", "options"),
}


def _kebab(name: str) -> str:
    return name.replace("_", "-").replace(".", "-")


def _build_flag_table() -> dict[str, FieldSpec]:
    """Flag -> setting. Raises at import if two settings would share a flag."""
    key_counts = Counter(spec.toml_key for spec in ALL_FIELDS if spec.section != "campaign")
    table: dict[str, FieldSpec] = {}

    def add(flag: str, spec: FieldSpec) -> None:
        if flag in table and table[flag] is not spec:
            raise RuntimeError(f"flag {flag} would name both {table[flag].dotted} and {spec.dotted}")
        if flag in TABLE_FLAGS:
            raise RuntimeError(f"flag {flag} is reserved for key=value tables")
        table[flag] = spec

    for spec in ALL_FIELDS:
        add(f"--{spec.section}.{spec.toml_key}", spec)
        add(f"--{_kebab(spec.section)}-{_kebab(spec.toml_key)}", spec)
    for spec in ALL_FIELDS:
        if spec.flag:
            add(f"--{spec.flag}", spec)
        elif key_counts[spec.toml_key] == 1 and spec.section != "campaign" and not isinstance(spec.default, dict):
            add(f"--{_kebab(spec.toml_key)}", spec)
        for alias in spec.aliases:
            add(f"--{_kebab(alias)}", spec)
    return table


FLAGS: dict[str, FieldSpec] = _build_flag_table()


def short_flag(spec: FieldSpec) -> str:
    """The shortest flag naming ``spec`` (what help and docs show)."""
    names = [flag for flag, owner in FLAGS.items() if owner is spec and "." not in flag]
    return min(names, key=len)


@dataclass
class RunArgs:
    """A parsed run command line: config path, setting overrides, and command options."""

    config: str | None = None
    overrides: list[Override] = field(default_factory=list)
    options: dict[str, str | bool] = field(default_factory=dict)


_BOOL_WORDS = ("true", "false")


def parse_run_args(argv: list[str], command_options: dict[str, bool]) -> RunArgs:
    """Parse ``[CONFIG] [--flag value | --flag=value]...``.

    ``command_options`` are the command's own flags (name -> whether it takes a value),
    such as ``--json`` for explain. Every other flag must name a setting.
    """
    result = RunArgs()
    index = 0
    while index < len(argv):
        token = argv[index]
        index += 1
        if not token.startswith("--") or token == "--":
            if token == "--" or token.startswith("-") and not _is_number(token):
                raise UsageError(f"unexpected argument '{token}'; flags start with -- (see `retrain --help`)")
            if result.config is not None:
                raise UsageError(
                    f"unexpected argument '{token}': the config file is already '{result.config}' "
                    "(settings are given as --flag value)"
                )
            result.config = token
            continue
        name, has_inline, inline = token.partition("=")
        if name in command_options:
            if command_options[name]:
                value, index = _value(name, has_inline, inline, argv, index)
                result.options[name] = value
            else:
                if has_inline:
                    raise UsageError(f"{name} takes no value")
                result.options[name] = True
            continue
        if name in TABLE_FLAGS:
            value, index = _value(name, has_inline, inline, argv, index)
            entry, equals, entry_value = value.partition("=")
            if not equals or not entry.strip():
                raise UsageError(f"{name} takes key=value, got '{value}' (e.g. {name} scale=2.0)")
            section, key = TABLE_FLAGS[name]
            result.overrides.append(Override((section, key, entry.strip()), entry_value, f"CLI {name} {entry.strip()}"))
            continue
        spec = FLAGS.get(name)
        if spec is None:
            # The kebab-case spelling of a setting is offered before its --section.key form.
            known = [*sorted(FLAGS, key=lambda flag: "." in flag), *command_options]
            raise UsageError(f"unknown flag {name}: {did_you_mean(name, known, 'run `retrain --help` to list the flags')}")
        if spec.type is bool and not has_inline and (index >= len(argv) or argv[index].lower() not in _BOOL_WORDS):
            value = "true"
        else:
            value, index = _value(name, has_inline, inline, argv, index)
        result.overrides.append(Override((spec.section, spec.toml_key), value, f"CLI {name}"))
    _refuse_repeated(result.overrides)
    return result


def _refuse_repeated(overrides: list[Override]) -> None:
    """One setting given twice (``--lr 1 --lr 2``, or ``--lr`` and ``--training.lr``): the
    command line says two things, so it is refused rather than letting the last win."""
    first: dict[tuple[str, ...], Override] = {}
    for override in overrides:
        earlier = first.setdefault(override.path, override)
        if earlier is not override:
            where = ".".join(override.path[:2]) + "".join(f" {part}" for part in override.path[2:])
            raise UsageError(f"{earlier.where.removeprefix('CLI ')} {earlier.raw} and "
                             f"{override.where.removeprefix('CLI ')} {override.raw} both set {where}; give it once")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _value(name: str, has_inline: str, inline: str, argv: list[str], index: int) -> tuple[str, int]:
    if has_inline:
        return inline, index
    if index >= len(argv) or (argv[index].startswith("--") and len(argv[index]) > 2):
        raise UsageError(f"{name} needs a value (e.g. {name} VALUE or {name}=VALUE)")
    return argv[index], index + 1
