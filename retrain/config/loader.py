"""The strict config loader: TOML file < environment < CLI flags, checked against the schema.

Layers, lowest to highest: the schema defaults, the TOML file, ``RETRAIN_<SECTION>__<KEY>``
environment variables (``.env`` is loaded into the environment by the CLI first), and
CLI overrides. Every problem in every layer is collected and raised together as one
``ConfigError``; each problem names where it came from (``file:line``, ``env VAR`` or
``CLI --flag``), the setting, what is wrong and how to fix it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retrain.config import rules
from retrain.config.checker import INVALID, Checker
from retrain.config.schema import ALL_FIELDS, LEGACY_BACKEND_KEYS, SECTION_FIELDS, SECTIONS, Config
from retrain.config.toml_text import TOMLLIB_REDEFINED, first_redefinition, key_lines
from retrain.config.values import did_you_mean, parse_text_value, toml_type_name
from retrain.errors import ConfigError, ConfigIssue

logger = logging.getLogger(__name__)

ENV_PREFIX = "RETRAIN_"
# The variables that are not settings (see docs/cli.md).
ENV_VARIABLES = frozenset({"RETRAIN_DEBUG", "RETRAIN_LOG_LEVEL", "RETRAIN_CACHE_DIR"})
DEFAULT_CONFIG = "retrain.toml"


@dataclass(frozen=True)
class Override:
    """One setting given outside the TOML file: ``path`` is (section, key[, subkey])."""

    path: tuple[str, ...]
    raw: str
    where: str


@dataclass
class ResolvedConfig:
    """A loaded config plus where each explicitly set value came from."""

    config: Config
    path: Path | None
    # (section, key) -> "retrain.toml:12" / "env RETRAIN_TRAINING__LR" / "CLI --lr"
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    # Settings that are valid but have no effect here (e.g. another backend's options).
    warnings: list[ConfigIssue] = field(default_factory=list)


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[Override] = (),
    environ: Mapping[str, str] | None = None,
    *,
    refuse_unavailable: bool = True,
) -> Config:
    """Load, overlay and validate a config; raise ``ConfigError`` listing every problem.

    Settings for a feature this version cannot run (``rules.not_in_this_version``) are
    problems too, unless ``refuse_unavailable`` is false: tools that only read a config,
    such as a check of migrated values, accept them. Warnings (valid settings that have
    no effect) are logged."""
    resolved = resolve_config(path, overrides, environ, refuse_unavailable=refuse_unavailable)
    for warning in resolved.warnings:
        logger.warning("%s", warning)
    return resolved.config


def resolve_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[Override] = (),
    environ: Mapping[str, str] | None = None,
    *,
    refuse_unavailable: bool = True,
) -> ResolvedConfig:
    """Like ``load_config`` but also report where each explicitly set value came from."""
    file_path = Path(path) if path is not None else None
    data: dict[str, object] = {}
    lines: dict[tuple[object, ...], int] = {}
    label = ""
    if file_path is not None:
        label = str(file_path)
        data, lines = read_toml(file_path)
    builder = _Builder(label, lines)
    builder.take_file(data)
    builder.take_environment(os.environ if environ is None else environ)
    builder.take_overrides(overrides)
    config = builder.build(refuse_unavailable)
    return ResolvedConfig(config=config, path=file_path, sources=builder.sources, warnings=builder.warnings)


def parse_toml_text(text: str, label: str) -> dict[str, object]:
    """Parse TOML, turning a syntax error into a one-line ``ConfigError`` with line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python < 3.14 only puts the position in the message: "... (at line 2, column 5)".
        message = str(exc)
        position = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
        redefined = first_redefinition(text) if message.startswith(TOMLLIB_REDEFINED) else None
        if redefined is not None:
            raise ConfigError(ConfigIssue(f"{label}:{redefined.line}", *redefined.describe())) from exc
        if position:
            problem = message[: position.start()] + message[position.end() :]
            where = f"{label}:{position.group(1)}:{position.group(2)}"
        else:
            problem = message.replace("(at end of document)", "at the end of the file")
            line_count = text.count("\n") + 1
            where = f"{label}:{line_count}"
        raise ConfigError(
            ConfigIssue(where, "", "", f"invalid TOML: {problem}", "fix the syntax at that position")
        ) from exc


# A config is a page of settings; anything this large is not one (and reading, say,
# /dev/zero would never end).
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def read_config_bytes(path: Path) -> bytes:
    """The bytes of a config file, or a ``ConfigError`` saying why they cannot be read:
    a missing file, a FIFO or device (reading it could block forever), a file over
    ``MAX_CONFIG_BYTES``."""
    try:
        kind = path.stat().st_mode
        if not stat.S_ISREG(kind):
            raise ConfigError(ConfigIssue(str(path), "", "", "not a regular file (a FIFO, device or directory)",
                                          "give the path of a TOML file"))
        with path.open("rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(ConfigIssue(str(path), "", "", f"larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MB, "
                                          "which no config is", "give the path of a TOML config file"))
        return raw
    except FileNotFoundError as exc:
        fix = "run `retrain init` to write a starter config" if path.name == DEFAULT_CONFIG else "check the path"
        raise ConfigError(ConfigIssue(str(path), "", "", "config file not found", fix)) from exc
    except OSError as exc:
        raise ConfigError(ConfigIssue(str(path), "", "", f"cannot read the file ({exc.strerror})", "check the path")) from exc


def decode_config(raw: bytes, label: str) -> str:
    """Config bytes as text; binary or non-UTF-8 data is a ``ConfigError``."""
    try:
        # A byte-order mark (some Windows editors write one) is not part of the TOML.
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            ConfigIssue(f"{label}:byte {exc.start}", "", "", "not a UTF-8 text file", "a config must be TOML text")
        ) from exc
    if "\x00" in text:
        raise ConfigError(ConfigIssue(label, "", "", "binary data (NUL bytes) in the file", "a config must be TOML text"))
    return text


def read_toml(path: Path) -> tuple[dict[str, object], dict[tuple[object, ...], int]]:
    """Read a config file: its data and the line of every key."""
    text = decode_config(read_config_bytes(path), str(path))
    data = parse_toml_text(text, str(path))
    if not data:
        raise ConfigError(
            ConfigIssue(str(path), "", "", "the config file is empty",
                        "write at least one section, or run `retrain init` for a commented starter")
        )
    return data, key_lines(text)


# ---------------------------------------------------------------------------------------
# Building a Config from layered raw values


def _set_entry(table: dict[str, object], names: tuple[str, ...], value: object) -> None:
    """Set ``names`` (``("auth", "password")``) inside a free-form table, nested as TOML
    dotted keys are. Environment names are upper case, so a name that differs only in case
    from a key the table has (``OPENAI_API_KEY`` from the snapshot) sets that key."""
    for depth, name in enumerate(names):
        key = name if name in table else next((k for k in table if k.lower() == name.lower()), name)
        if depth == len(names) - 1:
            table[key] = value
            return
        inner = table.get(key)
        if not isinstance(inner, dict):
            inner = table[key] = {}
        table = inner


class _Builder(Checker):
    """Collects raw values per setting with their origin, then validates them all."""

    # -- layer 1: the file ----------------------------------------------------------

    def take_file(self, data: dict[str, object]) -> None:
        for section, table in data.items():
            if section not in SECTIONS:
                self._unknown_section(section, table)
                continue
            if not isinstance(table, dict):
                self.problem(self.where(section), "", section,
                             f"'{section}' must be a table ([{section}]), not a {toml_type_name(table)}",
                             f"write it as a [{section}] section")
                continue
            self._take_section_table(section, table)

    def _unknown_section(self, section: str, value: object) -> None:
        owner = _section_of_key(section)
        if owner is not None and not isinstance(value, dict):
            fix = f"put it under [{owner}]"
            self.problem(self.where(section), "", section, "keys must live in a section", fix)
            return
        self.problem(self.where(section), section, "", "unknown section",
                     did_you_mean(section, SECTIONS, "sections are: " + ", ".join(SECTIONS)))

    def _take_section_table(self, section: str, table: dict[str, object]) -> None:
        specs = {spec.toml_key: spec for spec in SECTION_FIELDS[section]}
        aliases = {alias: spec for spec in SECTION_FIELDS[section] for alias in spec.aliases}
        for key, value in table.items():
            where = self.where(section, key)
            if section == "backend" and key in LEGACY_BACKEND_KEYS:
                continue  # reported together below
            spec = specs.get(key) or aliases.get(key)
            if spec is None:
                self._unknown_key(where, section, key)
                continue
            if key in spec.aliases and spec.toml_key in table:
                self.problem(where, section, key,
                             f"both '{key}' and '{spec.toml_key}' are set; '{key}' is the older name of the same setting",
                             f"keep only {spec.toml_key}")
                continue
            self._set(section, spec.toml_key, value, where)
        if section == "backend":
            legacy = {key: value for key, value in table.items() if key in LEGACY_BACKEND_KEYS}
            if legacy:
                self._legacy_backend_keys(legacy)

    def _unknown_key(self, where: str, section: str, key: str) -> None:
        known = [spec.toml_key for spec in SECTION_FIELDS[section]]
        other = _section_of_key(key)
        if other is not None and other != section:
            fix = f"'{key}' belongs in [{other}]"
        else:
            fix = did_you_mean(key, known, f"[{section}] keys are: {', '.join(known)}")
        self.problem(where, section, key, "unknown key", fix)

    def _legacy_backend_keys(self, legacy: dict[str, object]) -> None:
        import tomli_w

        moved = {LEGACY_BACKEND_KEYS[key]: value for key, value in legacy.items()}
        block = tomli_w.dumps({"backend": {"options": moved}}).strip().replace("\n", "\n      ")
        first = min(legacy, key=lambda key: self.lines.get(("backend", key), 0))
        target = self.label or "<config>"
        self.problem(
            self.where("backend", first), "backend", ", ".join(legacy),
            "legacy prime_rl_* keys are no longer read from [backend]; they now live in [backend.options]:\n      "
            + block,
            f"run `retrain migrate-config {target} --write` to rewrite the file (comments are kept)",
        )

    def _set(self, section: str, key: str, value: object, where: str) -> None:
        self.values[section][key] = (value, where)

    # -- layer 2: the environment ---------------------------------------------------

    def take_environment(self, environ: Mapping[str, str]) -> None:
        for name in sorted(environ):
            if not name.startswith(ENV_PREFIX) or name in ENV_VARIABLES:
                continue
            if "__" not in name:
                self._misspelled_environment_name(name)
                continue
            parts = name[len(ENV_PREFIX) :].lower().split("__")
            self._take_text(tuple(parts), environ[name], f"env {name}")

    def _misspelled_environment_name(self, name: str) -> None:
        """``RETRAIN_TRAINING_LR`` (one underscore) sets nothing: an error when it spells a
        setting, otherwise a warning, never silence."""
        rest = name[len(ENV_PREFIX):].lower()
        for spec in ALL_FIELDS:
            if rest == f"{spec.section}_{spec.toml_key}".replace(".", "_"):
                meant = f"{ENV_PREFIX}{spec.section.upper().replace('.', '__')}__{spec.toml_key.upper()}"
                self.problem(f"env {name}", spec.section, spec.toml_key, "sets nothing: a setting's variable "
                             "separates section and key with two underscores", f"rename it {meant}")
                return
        self.warnings.append(ConfigIssue(f"env {name}", "", "", "is not a retrain variable and is ignored",
                                         f"settings are {ENV_PREFIX}<SECTION>__<KEY>; the others are "
                                         + ", ".join(sorted(ENV_VARIABLES))))

    # -- layer 3: CLI overrides -----------------------------------------------------

    def take_overrides(self, overrides: Sequence[Override]) -> None:
        for override in overrides:
            self._take_text(override.path, override.raw, override.where)

    def _take_text(self, path: tuple[str, ...], raw: str, where: str) -> None:
        """Apply one textual override (env var or CLI) at ``path``."""
        section = path[0]
        if section not in SECTIONS:
            self.problem(where, section, "", "unknown section", did_you_mean(section, SECTIONS, ""))
            return
        if len(path) < 2:
            self.problem(where, section, "", "names a section, not a setting", f"name a key, e.g. {section}.<key>")
            return
        specs = {spec.toml_key: spec for spec in SECTION_FIELDS[section]}
        key = path[1]
        spec = specs.get(key)
        if spec is None:
            alias_spec = next((s for s in SECTION_FIELDS[section] if key in s.aliases), None)
            if alias_spec is None:
                self._unknown_key(where, section, key)
                return
            spec, key = alias_spec, alias_spec.toml_key
        if len(path) == 2:
            self._set(section, key, parse_text_value(raw, spec.type), where)
            return
        if spec.type is not dict and getattr(spec.type, "__origin__", None) is not dict:
            self.problem(where, section, key, f"'{key}' is not a table, so '{'.'.join(path[2:])}' cannot be set inside it",
                         f"set {section}.{key} itself")
            return
        current, current_where = self.values[section].get(key, (None, ""))
        table = copy.deepcopy(current) if isinstance(current, dict) else {}
        entry = ".".join(path[2:])
        _set_entry(table, path[2:], parse_text_value(raw, None))
        self.entry_where[(section, key, entry)] = where
        self._set(section, key, table, current_where or where)

    # -- validation -----------------------------------------------------------------

    def build(self, refuse_unavailable: bool = True) -> Config:
        """The config, or a ``ConfigError`` with every problem: values, then the cross-field
        rules and unavailable features, judged on the valid values (others at their defaults)."""
        sections: dict[str, object] = {}
        invalid: set[tuple[str, str]] = set()
        for section, cls in SECTIONS.items():
            kwargs: dict[str, object] = {}
            for spec in SECTION_FIELDS[section]:
                if spec.toml_key not in self.values[section]:
                    continue
                value, where = self.values[section][spec.toml_key]
                self.sources[(section, spec.toml_key)] = where
                known = len(self.issues)
                checked = self.check_setting(spec, value, where)
                if checked is not INVALID:
                    kwargs[spec.name] = checked
                if len(self.issues) > known:
                    invalid.add((section, spec.toml_key))
            sections[section] = cls(**kwargs)
        config = Config(**sections)  # type: ignore[arg-type]
        self.issues.extend(rules.check(config, self.sources, frozenset(invalid)))
        if refuse_unavailable:
            self.issues.extend(rules.not_in_this_version(config, self.sources, frozenset(invalid)))
        if self.issues:
            raise ConfigError(sorted(self.issues, key=_issue_order))
        self.warnings.extend(rules.no_effect(config, self.sources))
        return config



def _issue_order(issue: ConfigIssue) -> tuple[int, int]:
    """File problems first, by line; then environment variables; then CLI flags."""
    layer = 2 if issue.where.startswith("CLI") else 1 if issue.where.startswith("env") else 0
    _, _, line = issue.where.rpartition(":")
    return (layer, int(line) if line.isdigit() else 0)


def _section_of_key(key: str) -> str | None:
    """The section that declares ``key``, when exactly one does."""
    owners = {spec.section for spec in ALL_FIELDS if spec.toml_key == key}
    return owners.pop() if len(owners) == 1 else None


def replace_setting(config: Config, dotted: str, value: object) -> Config:
    """A copy of ``config`` with one setting changed (no validation; see ``load_config``)."""
    section, _, key = dotted.partition(".")
    spec = next(spec for spec in ALL_FIELDS if spec.dotted == dotted)
    section_value = dataclasses.replace(getattr(config, section), **{spec.name: value})
    return dataclasses.replace(config, **{section: section_value})
