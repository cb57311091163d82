"""``retrain init-plugin --kind K --name N [--output-dir D] [--with-test]``: a plugin scaffold.

Writes ``D/N.py`` (default ``D = plugins``, the default search path) implementing the
exact contract the runtime calls for kind K, and with ``--with-test`` a ``D/test_N.py``
that loads the plugin through the registry and exercises that contract (it passes as
written: ``cd D && pytest``). ``D`` is created if missing; existing files are never
overwritten, and a failed write leaves nothing behind. Prints the config
lines that select the new plugin.
"""

from __future__ import annotations

import argparse
import keyword
import string
import sys
from importlib import resources
from pathlib import Path

from retrain import registry_names
from retrain.commands.init import write_new_files
from retrain.errors import UsageError

DESCRIPTION = "write a plugin scaffold (and its test)"

KINDS = tuple(registry_names.BUILTINS)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"init-plugin: {message} (see `retrain init-plugin --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="retrain init-plugin", description="Write a plugin scaffold that implements the runtime contract.")
    parser.add_argument("--kind", required=True, choices=KINDS, help="plugin kind")
    parser.add_argument("--name", required=True, help="module name, a Python identifier (also the function/class name)")
    parser.add_argument("--output-dir", default="plugins", help="where to write it (default: plugins)")
    parser.add_argument("--with-test", action="store_true", help="also write test_<name>.py (run it with pytest)")
    return parser


def class_name(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Plugin"


# Each kind: (module template, test template, config lines). Templates use $name,
# $Class and $dotted; they are string.Template, so Python braces need no escaping.

# The scaffold sources live in retrain/templates/plugins/<kind>.py.tmpl and
# <kind>_test.py.tmpl (string.Template syntax: $name, $Class, $dotted).
# How a config selects a plugin of each kind.
CONFIG_LINES: dict[str, str] = {
    "advantage": '[algorithm]\nadvantage_mode = "$dotted"',
    "transform": '[algorithm]\ntransform_mode = "$dotted"',
    "uncertainty": '[algorithm]\nuncertainty_kind = "$dotted"',
    "algorithm": '[algorithm]\nalgorithm_mode = "$dotted"',
    "reward": '[reward]\ntype = "custom"\ncustom_module = "$name"\ncustom_function = "$name"',
    "data": '[data]\nsource = "$dotted"',
    "planning": '[planning]\ndetector = "$dotted"',
    "engine": '[inference]\nengine = "$dotted"',
    "backend": '[backend]\nbackend = "$dotted"',
    "environment": '[environment]\nprovider = "$dotted"',
}


def _template(name: str) -> str:
    return resources.files("retrain.templates").joinpath(f"plugins/{name}.py.tmpl").read_text(encoding="utf-8")


def render(kind: str, name: str) -> tuple[str, str, str]:
    """(module source, test source, config lines) of the scaffold for ``kind``."""
    module, config_lines = _template(kind), CONFIG_LINES[kind]
    test = _template("test_header") + _template(f"{kind}_test")
    function_kinds = ("advantage", "transform", "uncertainty", "algorithm", "reward")
    attribute = name if kind in function_kinds else class_name(name)
    values = {"name": name, "Class": class_name(name), "dotted": f"{name}.{attribute}"}
    return tuple(string.Template(text).substitute(values) for text in (module, test, config_lines))  # type: ignore[return-value]


def write_scaffold(kind: str, name: str, output_dir: Path, with_test: bool) -> list[Path]:
    """Write the scaffold files (creating ``output_dir`` if needed), all or none.

    Raises ``UsageError`` rather than overwrite anything, and ``RetrainError`` when the
    folder cannot be written.
    """
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("test_"):
        raise UsageError(f"init-plugin: --name '{name}' must be a Python identifier (not a keyword, not test_*), "
                         "e.g. my_advantage")
    if name in sys.stdlib_module_names:
        raise UsageError(f"init-plugin: --name '{name}' is a Python standard-library module; pick another name")
    module_text, test_text, _ = render(kind, name)
    targets = {output_dir / f"{name}.py": module_text}
    if with_test:
        targets[output_dir / f"test_{name}.py"] = test_text
    existing = [str(path) for path in targets if path.exists() or path.is_symlink()]
    if existing:
        raise UsageError(f"init-plugin: refusing to overwrite {', '.join(existing)} — choose another --name or "
                         "--output-dir, or remove the file")
    write_new_files(targets)
    return list(targets)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    output_dir = Path(args.output_dir)
    made = "" if output_dir.is_dir() else f" (created the folder {output_dir})"
    written = write_scaffold(args.kind, args.name, output_dir, args.with_test)
    _, _, config_lines = render(args.kind, args.name)
    print(f"wrote {', '.join(str(path) for path in written)}{made}")
    print("\nselect it in your config with:\n")
    print(config_lines)
    print(f'\n[plugins]\nsearch_paths = ["{args.output_dir}"]')
    if args.with_test:
        print(f"\nrun its test with: cd {output_dir} && python -m pytest test_{args.name}.py")
    return 0
