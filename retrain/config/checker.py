"""Collecting configuration problems, and checking the settings whose value is a table.

``Checker`` is the base of the loader's builder: it records each problem with where it
came from, and checks one setting's value, including the tables: ``[backend.options]``
against the options the chosen backend declares, ``[environment] args`` (a table or a
JSON object string) and ``[[campaign.conditions]]`` with their overrides.
"""

from __future__ import annotations

import collections
import json
from typing import Any

from retrain.config.schema import ALL_FIELDS, BACKEND_OPTIONS, SECTIONS, CampaignCondition, FieldSpec, fields_of
from retrain.config.toml_text import line_of
from retrain.config.values import check_value, did_you_mean, normalize, toml_type_name
from retrain.errors import ConfigIssue

# A rejected value: the setting keeps its default while the problem is reported.
INVALID = object()


class Checker:
    """Problems and warnings found so far, and the checks of single settings."""

    def __init__(self, label: str, lines: dict[tuple[object, ...], int]) -> None:
        self.label = label
        self.lines = lines
        self.issues: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []
        # section -> key -> (value, where); later layers replace earlier ones.
        self.values: dict[str, dict[str, tuple[object, str]]] = {name: {} for name in SECTIONS}
        self.sources: dict[tuple[str, str], str] = {}
        # Where single entries of a table setting were given (--backend-opt k=v etc.).
        self.entry_where: dict[tuple[str, str, str], str] = {}

    def where(self, *path: object) -> str:
        line = line_of(self.lines, tuple(path))
        if not self.label:
            return ""
        return f"{self.label}:{line}" if line is not None else self.label

    def problem(self, where: str, section: str, key: str, problem: str, fix: str = "") -> None:
        self.issues.append(ConfigIssue(where, section, key, problem, fix))

    def check_setting(self, spec: FieldSpec, value: object, where: str) -> object:
        """The checked value of one setting, or ``INVALID`` after recording its problems."""
        section, key = spec.section, spec.toml_key
        if spec.section == "backend" and spec.name == "options":
            return self._check_backend_options(value, where)
        if spec.section == "environment" and spec.name == "args":
            return self._check_environment_args(value, where)
        if spec.section == "campaign" and spec.name == "conditions":
            return self._check_conditions(value, where)
        problems = check_value(spec, value)
        for problem, fix in problems:
            self.problem(where, section, key, problem, fix)
        return INVALID if problems else normalize(spec, value)

    def _check_backend_options(self, value: object, where: str) -> object:
        if not isinstance(value, dict):
            self.problem(where, "backend", "options", f"must be a table, got {toml_type_name(value)}",
                         "write it as a [backend.options] section")
            return INVALID
        # Where each option was set, so that any component's message about one can say so.
        for key in value:
            self.sources[("backend.options", key)] = (self.entry_where.get(("backend", "options", key))
                                                      or self.where("backend", "options", key) or where)
        backend_value = self.values["backend"].get("backend", ("local", ""))[0]
        if not isinstance(backend_value, str):
            return dict(value)  # [backend] backend is wrong itself, and reported there
        options_type = BACKEND_OPTIONS.get(backend_value)
        if options_type is None:
            return dict(value)  # a plugin backend checks its own options
        specs = {spec.toml_key: spec for spec in fields_of(options_type, "backend.options")}
        result = {}
        for key, item in value.items():
            item_where = self.sources[("backend.options", key)]
            spec = specs.get(key)
            owner = _other_backend_with_option(backend_value, key)
            if spec is None and owner is not None:
                self.warnings.append(ConfigIssue(
                    item_where, "backend.options", key,
                    f"is an option of backend \"{owner}\" and has no effect with backend \"{backend_value}\"",
                    "remove it, or keep it only in configs for that backend"))
                continue
            if spec is None:
                fix = did_you_mean(key, specs, f"backend \"{backend_value}\" takes: {', '.join(specs) or 'no options'}")
                self.problem(item_where, "backend.options", key, f"not an option of backend \"{backend_value}\"", fix)
                continue
            problems = check_value(spec, item)
            for problem, fix in problems:
                self.problem(item_where, "backend.options", key, problem, fix)
            if not problems:
                result[key] = normalize(spec, item)
        return result

    def _check_environment_args(self, value: object, where: str) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                self.problem(where, "environment", "args", f"not valid JSON ({exc.msg} at column {exc.colno})",
                             "write a TOML table instead: args = { split = \"train\" }")
                return INVALID
            if not isinstance(parsed, dict):
                self.problem(where, "environment", "args", "the JSON string must hold an object",
                             "write a TOML table instead: args = { split = \"train\" }")
                return INVALID
            return parsed
        if not isinstance(value, dict):
            self.problem(where, "environment", "args", f"must be a table or a JSON object string, got {toml_type_name(value)}",
                         "write args = { key = value }")
            return INVALID
        return dict(value)

    def _check_conditions(self, value: object, where: str) -> object:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.problem(where, "campaign", "conditions", "must be an array of tables",
                         "write each condition as a [[campaign.conditions]] section")
            return INVALID
        specs = {spec.toml_key: spec for spec in fields_of(CampaignCondition, "campaign.conditions")}
        conditions = []
        for index, table in enumerate(value):
            # Each value was checked against its field's declared type just above.
            kwargs: dict[str, Any] = {}
            # Settings written straight into the condition (lr = 1e-4, training = {...}) join
            # its overrides, as the closest existing campaign format writes them.
            loose: dict[str, object] = {}
            for key, item in table.items():
                item_where = self.where("campaign", "conditions", index, key) or where
                spec = specs.get(key)
                if spec is None:
                    settings = _loose_settings(key, item)
                    checked = self._check_condition_overrides(settings, item_where, index) if settings else None
                    if isinstance(checked, dict):
                        loose.update(checked)
                    elif not settings:
                        self.problem(item_where, f"campaign.conditions[{index}]", key, "unknown key",
                                     did_you_mean(key, [*specs, *BARE_NAMES],
                                                  "use overrides = { \"section.key\" = value } for other settings"))
                    continue
                if key == "overrides":
                    checked = self._check_condition_overrides(item, item_where, index)
                else:
                    problems = check_value(spec, item)
                    for problem, fix in problems:
                        self.problem(item_where, f"campaign.conditions[{index}]", key, problem, fix)
                    checked = INVALID if problems else normalize(spec, item)
                if checked is not INVALID:
                    kwargs[spec.name] = checked
            for name in sorted(set(loose) & set(kwargs.get("overrides", {}))):
                self.problem(where, f"campaign.conditions[{index}]", name, "is set both in the condition and in its "
                             "overrides", "set it once")
            if loose:
                kwargs["overrides"] = {**kwargs.get("overrides", {}), **loose}
            conditions.append(CampaignCondition(**kwargs))
        return conditions

    def _check_condition_overrides(self, value: object, where: str, index: int) -> object:
        if not isinstance(value, dict):
            self.problem(where, f"campaign.conditions[{index}]", "overrides", "must be a table",
                         "write overrides = { \"training.lr\" = 1e-4 }")
            return INVALID
        by_dotted = {spec.dotted: spec for spec in ALL_FIELDS}
        result = {}
        for name, item in _flatten(value).items():
            spec = by_dotted.get(name)
            if spec is None or spec.section == "campaign":
                self.problem(where, f"campaign.conditions[{index}].overrides", name, "unknown setting",
                             did_you_mean(name, [d for d in by_dotted if not d.startswith("campaign.")],
                                           "name settings as \"section.key\""))
                continue
            problems = check_value(spec, item)
            for problem, fix in problems:
                self.problem(where, f"campaign.conditions[{index}].overrides", name, problem, fix)
            if not problems:
                result[name] = normalize(spec, item)
        return result


def _bare_names() -> dict[str, str]:
    """Setting names usable without their section (those unique across sections, as the
    bare CLI flags are, plus each setting's own short name) -> ``section.key``."""
    counts = collections.Counter(spec.toml_key for spec in ALL_FIELDS if spec.section != "campaign")
    names: dict[str, str] = {}
    for spec in ALL_FIELDS:
        if spec.section == "campaign":
            continue
        if counts[spec.toml_key] == 1:
            names[spec.toml_key] = spec.dotted
        for name in (spec.flag, *spec.aliases):
            if name:
                names[name.replace("-", "_")] = spec.dotted
    return names


BARE_NAMES = _bare_names()


def _loose_settings(key: str, item: object) -> dict[str, object]:
    """A condition key that names settings outside ``overrides``: a bare name (``lr``) or a
    section table (``training = { lr = 1e-4 }``); {} for anything else."""
    if key in BARE_NAMES:
        return {BARE_NAMES[key]: item}
    if key in SECTIONS and key != "campaign" and isinstance(item, dict):
        return _flatten({key: item})
    return {}


def _other_backend_with_option(backend: str, key: str) -> str | None:
    for name, options_type in BACKEND_OPTIONS.items():
        if name != backend and key in {spec.toml_key for spec in fields_of(options_type, "backend.options")}:
            return name
    return None


def _flatten(table: dict[str, object], prefix: str = "") -> dict[str, object]:
    """{"training": {"lr": 1}} and {"training.lr": 1} both become {"training.lr": 1}."""
    flat: dict[str, object] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "." not in key and name in SECTIONS:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
