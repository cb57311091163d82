"""``retrain init [PATH] [--template NAME] [--list]``: write a commented starter config.

Templates: ``cpu`` (the offline tiny-model default that learns on a laptop), ``quickstart``
(a short 4B-model GPU run), ``full`` (every setting at its default with its help, generated
from the schema) and ``campaign`` (conditions x seeds). An existing file is never
overwritten; missing folders on the way are created, and a write that fails leaves no
trace (no partial file, no empty folder).
"""

from __future__ import annotations

import argparse
import errno
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


def missing_folders(folder: Path) -> list[Path]:
    """The folders that writing into ``folder`` would create, outermost first.

    Raises ``RetrainError`` when a path on the way exists but is not a folder, since
    creating the folders would fail there with an unhelpful ``FileExistsError``.
    """
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    if not current.is_dir():
        raise RetrainError(f"cannot write into {folder}: {current} is a file, not a folder — choose another path")
    return missing[::-1]


def write_problem(path: Path, exc: OSError) -> str:
    """What went wrong writing ``path``, where, and what to do about it."""
    # A failure inside the target's folder names a temporary file; report the folder.
    failed = Path(exc.filename) if exc.filename else path.parent
    where = failed if failed in (path, *path.parents) else path.parent
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write {path}: permission denied at {where} — choose a folder you can write to"
    if exc.errno == errno.EROFS:
        return f"cannot write {path}: {where} is on a read-only file system — choose another folder"
    if exc.errno == errno.ENOSPC:
        return f"cannot write {path}: no space left on the device — free some space or choose another folder"
    return f"cannot write {path}: {exc.strerror or exc} ({where}) — check the path, or choose another one"


def write_new_files(files: dict[Path, str]) -> list[Path]:
    """Create every file of ``files`` (and any missing folder): all of them or none.

    A file that already exists is never touched; the caller reports that before calling,
    and one that appears meanwhile is refused here. If any write fails, the files and
    folders made so far are removed again and ``RetrainError`` says why. Returns the
    folders that were created.
    """
    for path in files:
        if path.is_dir():
            raise RetrainError(f"{path} is a folder, not a file — choose another name or move the folder away")
    created: list[Path] = []
    written: list[Path] = []
    for path, text in files.items():
        try:
            new_folders = missing_folders(path.parent)
            for folder in new_folders:
                folder.mkdir()
                created.append(folder)
            create_new(path, text)
            written.append(path)
        except (OSError, RetrainError) as exc:
            for done in reversed(written):
                done.unlink()
            for folder in reversed(created):
                if not any(folder.iterdir()):
                    folder.rmdir()
            if isinstance(exc, RetrainError):
                raise
            if isinstance(exc, FileExistsError):
                raise RetrainError(f"{path} already exists; it was left untouched — choose another path or move it "
                                   "away") from exc
            raise RetrainError(write_problem(path, exc)) from exc
    return created


def write_new_file(path: Path, text: str) -> list[Path]:
    """Create ``path`` with ``text``; refuse (touching nothing) if it exists.

    Returns the folders created on the way.
    """
    if path.is_dir():
        raise RetrainError(f"{path} is a folder — give the path of the file to write, e.g. {path / 'retrain.toml'}")
    if path.exists() or path.is_symlink():
        raise RetrainError(f"{path} already exists; it was left untouched — choose another path or move it away")
    return write_new_files({path: text})


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
    created = write_new_file(path, template_text(args.template))
    made = f", created the folder {created[-1]}" if created else ""
    if args.template == "campaign":
        print(f"wrote {path} (template 'campaign'{made}); run it with: retrain {path} (or print one command per "
              f"run for other machines: retrain {path} --print-commands)", file=sys.stderr)
    else:
        print(f"wrote {path} (template '{args.template}'{made}); check it with: retrain explain {path}", file=sys.stderr)
    return 0
