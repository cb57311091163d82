"""Documents generated from the schema: the configuration reference page and the fully
commented ``full`` config template.

``docs/configuration.md`` is this module's output; a test fails when the committed page
differs, so the reference can never drift from the declarations. Regenerate it with
``python -m retrain.config.reference > docs/configuration.md``.
"""

from __future__ import annotations

import json
import sys

from retrain.config.flags import FLAGS, TABLE_FLAGS, short_flag
from retrain.config.schema import (
    BACKEND_OPTIONS,
    MAX_INT,
    SECTION_FIELDS,
    SECTIONS,
    CampaignCondition,
    FieldSpec,
    fields_of,
)


def _type_name(spec: FieldSpec) -> str:
    names = {str: "string", int: "integer", float: "float", bool: "boolean"}
    if spec.type in names:
        return names[spec.type]
    origin = getattr(spec.type, "__origin__", None)
    if origin is list:
        item = spec.type.__args__[0]  # type: ignore[attr-defined]
        return f"array of {names[item]}" if item in names else "array of tables"
    return "table"


def toml_literal(value: object) -> str:
    """A value as it would be written in TOML (inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_literal(item)}" for key, item in value.items()) + "}"
    return str(value)


def _allowed(spec: FieldSpec) -> str:
    names = [name for name in spec.allowed_names() if name]
    text = ", ".join(f"`{name}`" for name in names)
    if spec.accepts_dotted_path:
        text += ", or a dotted plugin path"
    bounds = []
    for symbol, value in ((">=", spec.ge), (">", spec.gt), ("<=", spec.le), ("<", spec.lt)):
        if value is not None and value != MAX_INT:
            shown = str(value) if isinstance(value, int) else f"{value:g}"
            bounds.append(f"{symbol} {shown}")
    return text or " and ".join(bounds)


def _table(specs: list[FieldSpec], with_flags: bool) -> list[str]:
    head = "| Key | Type | Default | Allowed | Flag | Description |" if with_flags else \
        "| Key | Type | Default | Allowed | Description |"
    rule = "|---|---|---|---|---|---|" if with_flags else "|---|---|---|---|---|"
    rows = [head, rule]
    for spec in specs:
        cells = [f"`{spec.toml_key}`", _type_name(spec), f"`{toml_literal(spec.default)}`", _allowed(spec)]
        if with_flags:
            cells.append(f"`{short_flag(spec)}`")
        description = spec.help
        if spec.aliases:
            description += f" (older name accepted: `{'`, `'.join(spec.aliases)}`)"
        if spec.secret:
            description += " (secret: blanked in config snapshots)"
        cells.append(description.replace("|", "\\|"))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def render_reference() -> str:
    """The configuration reference page (Markdown)."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from retrain/config/schema.py by `python -m retrain.config.reference`."
        " Do not edit by hand. -->",
        "",
        "Every setting retrain reads, by TOML section. Each one can also be set with the CLI flag shown,",
        "with `--section.key value`, or with an environment variable `RETRAIN_<SECTION>__<KEY>`",
        "(for example `RETRAIN_TRAINING__LR=1e-4`). Precedence, lowest first: these defaults, the TOML",
        "file, environment variables (including a `.env` file in the working directory), CLI flags.",
        "",
        "Plugin and backend tables take `key=value` entries from repeatable flags: "
        + ", ".join(f"`{flag} k=v` → `[{section}.{key}]`" for flag, (section, key) in TABLE_FLAGS.items())
        + ".",
        "",
    ]
    for section in SECTIONS:
        if section == "campaign":
            continue
        out += [f"## [{section}]", ""]
        out += _table(SECTION_FIELDS[section], with_flags=True)
        out.append("")
        if section == "backend":
            for backend, options_type in BACKEND_OPTIONS.items():
                out += [f"### [backend.options] for backend = \"{backend}\"", ""]
                specs = fields_of(options_type, "backend.options")
                out += _table(specs, with_flags=False) if specs else ["This backend takes no options."]
                out.append("")
            out += ["A plugin backend (a dotted path) receives `[backend.options]` unchecked.", ""]
    out += [
        "## [campaign]",
        "",
        "Only in campaign files: run every condition with every seed.",
        "",
    ]
    out += _table(SECTION_FIELDS["campaign"], with_flags=False)
    out += ["", "### [[campaign.conditions]]", ""]
    out += _table(fields_of(CampaignCondition, "campaign.conditions"), with_flags=False)
    out += ["", "## Every flag", "", "| Flag | Setting |", "|---|---|"]
    for flag, spec in sorted(FLAGS.items()):
        if "." not in flag:
            out.append(f"| `{flag}` | `[{spec.section}] {spec.toml_key}` |")
    out.append("")
    return "\n".join(out)


def render_full_template() -> str:
    """A complete config with every setting at its default and its help as a comment."""
    out = [
        "# retrain configuration: every setting at its default, with what it does.",
        "# Delete what you do not change; `retrain explain <file>` shows the result.",
        "",
    ]
    for section in SECTIONS:
        if section == "campaign":
            continue
        out.append(f"[{section}]")
        for spec in SECTION_FIELDS[section]:
            if isinstance(spec.default, dict):
                continue
            out.append(f"# {spec.help}")
            out.append(f"{spec.toml_key} = {toml_literal(spec.default)}")
        out.append("")
        for spec in SECTION_FIELDS[section]:
            if not isinstance(spec.default, dict):
                continue
            if section == "backend":
                out.append("# Backend-specific options; these are the local backend's (see the reference for the others).")
                out.append("[backend.options]")
                for option in fields_of(BACKEND_OPTIONS["local"], "backend.options"):
                    out.append(f"# {option.help}")
                    out.append(f"{option.toml_key} = {toml_literal(option.default)}")
            else:
                out.append(f"# {spec.help}")
                out.append(f"[{section}.{spec.toml_key}]")
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render_reference())
