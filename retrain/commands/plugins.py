"""``retrain plugins [CONFIG] [--json]``: built-in and discovered plugins, per kind.

Lists every kind's built-ins with a one-line description and the settings they read (a
credit stage's description is the first line of its docstring, its settings the config
sections it registered), then every module found in the ``[plugins] search_paths`` directories (of CONFIG, or the
defaults relative to the working directory) with its import status and the plugins it
registered. Importing a discovered module runs its top-level code, as a run would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TypedDict

from retrain import registry_names
from retrain.config.loader import resolve_config
from retrain.config.schema import Config, PluginsConfig
from retrain.errors import UsageError
from retrain.plugin_discovery import DiscoveredModule, discover
from retrain.registry import (
    BUILTIN_DESCRIPTIONS,
    SearchLocation,
    resolve,
    search_locations,
)

DESCRIPTION = "list built-in and discovered plugins"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"plugins: {message} (see `retrain plugins --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="retrain plugins", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("config", nargs="?", help="config whose [plugins] search_paths to use (default: search_paths = [\"plugins\"] in the working directory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


class BuiltinEntry(TypedDict):
    """One built-in plugin as ``retrain plugins`` lists it."""

    name: str
    description: str
    reads: str  # the settings it reads, "" when none
    available: bool  # False: named in the configuration reference, not in this version


def builtins_listing() -> dict[str, list[BuiltinEntry]]:
    """kind -> [{name, description, reads}] for every built-in."""
    listing: dict[str, list[BuiltinEntry]] = {}
    for kind, names in registry_names.BUILTINS.items():
        listing[kind] = []
        for name in names:
            description, reads = builtin_summary(kind, name)
            listing[kind].append({"name": name, "description": description, "reads": reads,
                                  "available": registry_names.shipped(kind, name)})
    return listing


def builtin_summary(kind: str, name: str) -> tuple[str, str]:
    """(description, settings read) of one built-in. Credit stages are imported (numpy
    only) and describe themselves; the other kinds are described from the table in
    ``retrain.registry`` without importing, or else by their class docstring."""
    from retrain.credit.stages import description_of, settings_read

    if kind in BUILTIN_DESCRIPTIONS:
        if name in BUILTIN_DESCRIPTIONS[kind]:
            return BUILTIN_DESCRIPTIONS[kind][name]
        if not registry_names.shipped(kind, name):
            return "", ""
        return description_of(resolve(kind, name, PluginsConfig())), ""
    resolved = resolve(kind, name, PluginsConfig())
    if kind == "algorithm":
        _, transform = registry_names.ALGORITHM_RECIPES[name]
        return description_of(resolved), settings_read(resolve("transform", transform, PluginsConfig()))
    return description_of(resolved), settings_read(resolved)


def _module_json(module: DiscoveredModule) -> dict[str, object]:
    return {
        "module": module.module,
        "file": module.file,
        "status": module.status,
        "error": module.error,
        "plugins": [{"name": p.name, "kind": p.kind, "description": p.description, "params": p.params}
                    for p in module.plugins],
    }


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.config:
        resolved = resolve_config(args.config)
        plugins: PluginsConfig = resolved.config.plugins
        base_dir: Path | None = Path(args.config).resolve().parent
    else:
        plugins, base_dir = Config().plugins, None
    locations = search_locations(plugins, base_dir)
    discovered = discover(plugins, base_dir)
    if args.json:
        payload = {
            "builtins": builtins_listing(),
            "search_paths": [{"entry": location.entry, "directory": str(location.directory or ""),
                              "module_prefix": location.prefix or "", "found": location.directory is not None}
                             for location in locations],
            "discovered": [_module_json(module) for module in discovered],
        }
        json.dump(payload, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(render_text(locations, discovered))
    return 0


def render_text(locations: list[SearchLocation], discovered: list[DiscoveredModule]) -> str:
    lines = ["Built-in plugins (use the name in the config):"]
    for kind, entries in builtins_listing().items():
        lines.append(f"  {kind}:")
        width = max(len(entry["name"]) for entry in entries)
        for entry in entries:
            reads = f"  [reads {entry['reads']}]" if entry["reads"] else ""
            later = "" if entry["available"] else "  (not in this version)"
            lines.append(f"    {entry['name'].ljust(width)}  {entry['description']}{reads}{later}")
    lines.append("")
    lines.append("Search paths ([plugins] search_paths):")
    for location in locations:
        lines.append(f"  {location.entry}: {location.describe()}")
    if not locations:
        lines.append("  (none)")
    lines.append("")
    lines.append("Discovered plugins (use module.attr in the config):")
    if not discovered:
        lines.append("  (no plugin modules in the search-path directories; `retrain init-plugin` writes one)")
    for module in discovered:
        if module.status != "ok":
            lines.append(f"  {module.file}: import error: {module.error}")
            continue
        lines.append(f"  {module.file}: ok")
        if not module.plugins:
            lines.append("    (no registered plugins; functions can still be named by dotted path)")
        for plugin in module.plugins:
            lines.append(f"    {plugin.kind:<11} {plugin.name}  {plugin.description}")
            for param in plugin.params:
                help_text = f"  {param['help']}" if param["help"] else ""
                lines.append(f"                params.{param['name']}: {param['type']} = {param['default']!r}{help_text}")
    return "\n".join(lines) + "\n"
