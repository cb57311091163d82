"""Discovering plugins in the ``[plugins] search_paths`` directories (for ``retrain plugins``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retrain.config.schema import PluginsConfig
from retrain.errors import PluginError
from retrain.plugin_params import describe_params
from retrain.registry import import_from_directory, plugin_spec, search_locations


@dataclass(frozen=True)
class DiscoveredPlugin:
    name: str
    kind: str
    description: str
    params: list[dict[str, object]]


@dataclass(frozen=True)
class DiscoveredModule:
    module: str
    file: str
    status: str  # "ok" or "error"
    error: str
    plugins: list[DiscoveredPlugin]


def discover(plugins: PluginsConfig, base_dir: Path | None = None) -> list[DiscoveredModule]:
    """Import every module found in the search-path directories and list its plugins.

    Registered objects (see ``register``) are listed with their kind; a module that
    fails to import is listed with the error instead.
    """
    found = []
    for location in search_locations(plugins, base_dir):
        if location.directory is None:
            continue
        for path in sorted(location.directory.iterdir()):
            if path.name.startswith(("_", ".")) or path.name.startswith("test_"):
                continue
            if path.suffix == ".py":
                module_name = path.stem
            elif path.is_dir() and (path / "__init__.py").is_file():
                module_name = path.name
            else:
                continue
            if not module_name.isidentifier():
                continue
            found.append(_discover_module(module_name, path, location.directory))
    return found


def _discover_module(module_name: str, path: Path, directory: Path) -> DiscoveredModule:
    try:
        module = import_from_directory(module_name, directory, f"plugin module '{module_name}'")
    except PluginError as exc:
        return DiscoveredModule(module_name, str(path), "error", str(exc), [])
    assert module is not None
    listed = []
    for attribute, obj in sorted(vars(module).items()):
        spec = plugin_spec(obj)
        if spec is None or getattr(obj, "__module__", module_name) != module_name:
            continue
        listed.append(DiscoveredPlugin(f"{module_name}.{attribute}", spec.kind, spec.description,
                                       describe_params(spec.params)))
    return DiscoveredModule(module_name, str(path), "ok", "", listed)
