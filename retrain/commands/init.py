"""``retrain init [PATH] [--template NAME] [--list]``: write a commented starter config.

Templates: ``cpu`` (the offline tiny-model default that learns on a laptop), ``quickstart``
(a short 4B-model GPU run), ``full`` (every setting at its default with its help, generated
from the schema) and ``campaign`` (conditions x seeds). An existing file is never
overwritten.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from retrain.atomic import create_new
from retrain.errors import RetrainError, UsageError

DESCRIPTION = "write a commented starter config"

TEMPLATES: dict[str, str] = {
    "cpu": "offline tiny model on the CPU; learns modular addition in a few minutes (the embedded default)",
    "quickstart": "a short, low-cost LoRA run of Qwen3-4B on one GPU (max_tokens = 1024)",
    "full": "every setting at its default, each with a comment saying what it does",
    "campaign": "a campaign: credit-assignment conditions x seeds on a shared base config",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"init: {message}")


def template_text(name: str) -> str:
    """The text of a template (``full`` is generated from the schema)."""
    if name == "full":
        from retrain.config.reference import render_full_template

        return render_full_template()
    return resources.files("retrain.templates").joinpath(f"{name}.toml").read_text(encoding="utf-8")


def write_new_file(path: Path, text: str) -> None:
    """Create ``path`` with ``text``; refuse (touching nothing) if it exists."""
    try:
        create_new(path, text)
    except FileExistsError as exc:
        raise RetrainError(f"{path} already exists; it was left untouched — choose another path or move it away") from exc


def main(argv: list[str]) -> int:
    parser = _Parser(prog="retrain init", description="Write a commented starter config.")
    parser.add_argument("path", nargs="?", default="retrain.toml", help="file to write (default: retrain.toml)")
    parser.add_argument("--template", default="cpu", help=f"one of: {', '.join(TEMPLATES)} (default: cpu)")
    parser.add_argument("--list", action="store_true", help="list the templates and exit")
    args = parser.parse_args(argv)
    if args.list:
        width = max(len(name) for name in TEMPLATES)
        for name, description in TEMPLATES.items():
            print(f"{name.ljust(width)}  {description}")
        return 0
    if args.template not in TEMPLATES:
        from retrain.config.values import did_you_mean

        raise UsageError(f"init: unknown template '{args.template}' — "
                         + did_you_mean(args.template, TEMPLATES, f"choose one of {', '.join(TEMPLATES)}"))
    path = Path(args.path)
    write_new_file(path, template_text(args.template))
    print(f"wrote {path} (template '{args.template}'); check it with: retrain explain {path}", file=sys.stderr)
    return 0
