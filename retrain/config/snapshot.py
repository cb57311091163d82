"""Write a fully resolved config as TOML that loads back to an equal config.

Every run writes one next to its logs (``<log_dir>/config.toml``) so ``retrain <that
file>`` reproduces it. Secrets (declared ``secret`` settings, and entries of free-form
tables whose names look like credentials) are written as empty strings, which every
such setting reads as "take it from the environment".
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from retrain import __version__
from retrain.atomic import write_atomic
from retrain.config.schema import (
    BACKEND_OPTIONS,
    SECTION_FIELDS,
    CampaignCondition,
    Config,
    fields_of,
)

REDACTED = ""
# A key whose name holds one of these (any case, at any depth of a table) holds a secret:
# every string under it is blanked. "auth" counts as a word of its own (http_auth,
# Authorization), not inside "author".
SECRET_NAME = re.compile(
    r"api[_-]?key|token|secret|passw(?:or)?d|pwd|credential|access[_-]?key|private[_-]?key|cookie"
    r"|(?:^|[^a-z])auth(?:orization|entication)?(?:$|[^a-z])",
    re.IGNORECASE,
)
# user:password@ in a URL (https://alice:PW@host/v1), wherever a string holds one.
# Up to the last @ before the path, query or fragment: a password may hold an @ itself.
URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/?#\s]*@", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with the credentials of any URL in it removed (``https://host/v1``)."""
    return URL_CREDENTIALS.sub(lambda match: match.group("scheme"), text)


def redact_value(value: object, secret: bool = False) -> object:
    """``value`` with secrets blanked: every string when ``secret`` (its name looked like a
    credential), entries of tables and lists by the same rule, URL credentials always."""
    if isinstance(value, dict):
        return {key: redact_value(item, secret or bool(SECRET_NAME.search(str(key)))) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_value(item, secret) for item in value]
    if isinstance(value, str):
        return REDACTED if secret and value else redact_text(value)
    return value


def _redact_table(table: dict[str, object]) -> dict[str, object]:
    redacted = redact_value(table)
    assert isinstance(redacted, dict)
    return redacted


def _condition_dict(condition: CampaignCondition) -> dict[str, object]:
    values: dict[str, object] = {}
    for spec in fields_of(CampaignCondition, "campaign.conditions"):
        value = getattr(condition, spec.name)
        if value != spec.default:
            values[spec.toml_key] = _redact_table(value) if isinstance(value, dict) else value
    return values


def config_to_dict(config: Config, redact: bool = True) -> dict[str, dict[str, object]]:
    """The config as nested TOML tables, every setting spelled out.

    ``[backend.options]`` of a built-in backend is written with its defaults filled in;
    ``[campaign]`` is left out when it holds no conditions and no seeds.
    """
    data: dict[str, dict[str, object]] = {}
    for section, specs in SECTION_FIELDS.items():
        section_value = getattr(config, section)
        if section == "campaign" and config.campaign == type(config.campaign)():
            continue
        table: dict[str, object] = {}
        for spec in specs:
            value = getattr(section_value, spec.name)
            if section == "backend" and spec.name == "options":
                value = _backend_options(config)
            if section == "campaign" and spec.name == "conditions":
                value = [_condition_dict(condition) for condition in value]
            if redact:
                value = redact_value(value, secret=spec.secret or bool(SECRET_NAME.search(spec.toml_key)))
            table[spec.toml_key] = value
        data[section] = table
    return data


def _backend_options(config: Config) -> dict[str, object]:
    values = dict(config.backend.options)
    options_type = BACKEND_OPTIONS.get(config.backend.backend)
    for spec in fields_of(options_type, "backend.options") if options_type else []:
        if spec.secret and values.get(spec.toml_key):
            values[spec.toml_key] = REDACTED
    return values


def config_to_toml(config: Config, redact: bool = True, header: str = "") -> str:
    """The config as TOML text (see ``config_to_dict``)."""
    import tomli_w

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"# Resolved retrain {__version__} configuration, written {stamp}.",
        "# Every setting is spelled out; secrets are blanked (they are read from the environment).",
        "# Reproduce in a new folder: retrain <this file> --log-dir NEW_DIR; continue: retrain --resume <its folder>",
    ]
    if header:
        lines.extend(f"# {line}" for line in header.splitlines())
    return "\n".join(lines) + "\n\n" + tomli_w.dumps(config_to_dict(config, redact=redact))


def write_snapshot(config: Config, path: Path) -> Path:
    """Write the resolved config (secrets redacted) to ``path`` atomically."""
    write_atomic(path, config_to_toml(config))
    return path


def redacted_paths(config: Config) -> list[str]:
    """Where the snapshot loses a value to redaction (``algorithm.params.api_key``,
    ``inference.url``): a resumed run, which starts from the snapshot, must be given
    those again (``missing_secrets``)."""
    return sorted(_changed_paths(config_to_dict(config, redact=False), config_to_dict(config), ""))


def _changed_paths(raw: object, redacted: object, prefix: str) -> list[str]:
    if isinstance(raw, dict) and isinstance(redacted, dict):
        return [path for key in raw for path in _changed_paths(raw[key], redacted.get(key), f"{prefix}.{key}".lstrip("."))]
    return [prefix] if raw != redacted else []


def missing_secrets(config: Config, recorded: list[object]) -> list[str]:
    """The paths of ``recorded`` (a run's ``redacted_paths``) whose value ``config`` has
    only in its redacted form: nobody gave them again."""
    raw, redacted = config_to_dict(config, redact=False), config_to_dict(config)
    missing = []
    for path in recorded:
        if isinstance(path, str) and _at(raw, path) == _at(redacted, path):
            missing.append(path)
    return missing


def _at(table: object, path: str) -> object:
    for part in path.split("."):
        table = table.get(part) if isinstance(table, dict) else None
    return table
