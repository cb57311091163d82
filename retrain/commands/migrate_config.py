"""``retrain migrate-config``: move legacy ``[backend] prime_rl_*`` keys into ``[backend.options]``.

Modes: a unified-diff preview (the default), ``--check`` for CI (exit 1 when a
migration is needed), ``--write [--backup]`` in place, ``--output PATH``, and
``--stdin``/``--stdout`` streaming; ``--json`` turns any of them into one JSON report.
The rewrite itself is ``retrain.config.migrate.migrate_text``; this module only reads,
writes (atomically: a temporary file renamed into place) and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import stat
import sys
from pathlib import Path

from retrain.atomic import write_atomic
from retrain.config.loader import decode_config, read_config_bytes
from retrain.config.migrate import Migration, migrate_text
from retrain.errors import ConfigError, ConfigIssue, UsageError

DESCRIPTION = "rewrite legacy config keys (preview, --check, --write)"

HELP = """usage: retrain migrate-config FILE [--check | --write [--backup] | --output PATH | --stdout] [--json]
       retrain migrate-config --stdin [--check | --output PATH | --stdout] [--json]

Move legacy [backend] prime_rl_* keys into [backend.options], keeping comments,
blank lines and key order. With no mode flag, print the change as a unified diff
and write nothing.

options:
  --check          exit 1 when FILE needs migrating (0 when not); write nothing
  --write          rewrite FILE in place (atomically, keeping its permissions)
  --backup         with --write: first save the original bytes to FILE.bak
  --output PATH    write the migrated config to PATH; FILE is left untouched
  --stdin          read the config from standard input instead of FILE
  --stdout         print the migrated config (not a diff) on standard output
  --json           print one JSON report instead of text (path, changed, moved
                   keys, conflicts, diff, written_to, backup)
  -h, --help       show this help

Exit codes: 0 done or nothing to do; 1 --check found keys to migrate;
2 bad flags, unreadable file or invalid TOML.
"""

# Pairs of flags that cannot be combined, with why.
CLASHES: tuple[tuple[str, str, str], ...] = (
    ("write", "output", "--write rewrites FILE in place while --output writes the result elsewhere"),
    ("write", "stdout", "--write rewrites FILE in place while --stdout prints the result"),
    ("write", "stdin", "standard input has no file to rewrite; use --stdin --stdout or --stdin --output PATH"),
    ("check", "write", "--check only reports and never writes"),
    ("check", "output", "--check only reports and never writes"),
    ("check", "stdout", "--check only reports; --stdout prints the migrated config"),
    ("output", "stdout", "the migrated config goes either to PATH or to standard output"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"migrate-config: {message} (see `retrain migrate-config --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="retrain migrate-config", add_help=False, allow_abbrev=False)
    parser.add_argument("file", nargs="?")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--backup", action="store_true")
    parser.add_argument("--output", metavar="PATH")
    parser.add_argument("--stdin", action="store_true")
    parser.add_argument("--stdout", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and check the flags; contradictory or incomplete combinations raise ``UsageError``."""
    args = _parser().parse_args(argv)
    if args.help:
        return args
    given = {name for name in ("check", "write", "backup", "stdin", "stdout") if getattr(args, name)}
    if args.output is not None:
        given.add("output")
    for first, second, why in CLASHES:
        if first in given and second in given:
            raise UsageError(f"migrate-config: --{first} and --{second} cannot be used together: {why}")
    if args.backup and not args.write:
        raise UsageError("migrate-config: --backup only works with --write (it saves FILE.bak before rewriting FILE)")
    if args.stdin and args.file is not None:
        raise UsageError(f"migrate-config: --stdin and FILE ({args.file}) cannot be used together: read one or the other")
    if not args.stdin and args.file is None:
        raise UsageError("migrate-config: no config given: name a FILE or pass --stdin (see `retrain migrate-config --help`)")
    if args.output is not None and args.file is not None and _same_file(Path(args.output), Path(args.file)):
        raise UsageError(f"migrate-config: --output {args.output} is FILE itself; use --write to rewrite it in place")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.help:
        print(HELP, end="")
        return 0
    if args.stdin:
        label = "<stdin>"
        original = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
        source: Path | None = None
    else:
        label = args.file
        source = Path(args.file)
        original = read_config_bytes(source)
    migration = migrate_text(decode_config(original, label), label)
    migrated = migration.migrated.encode("utf-8")

    written_to: Path | None = None
    backup: Path | None = None
    if args.write and migration.changed:
        assert source is not None
        target = Path(os.path.realpath(source))
        mode = stat.S_IMODE(target.stat().st_mode)
        if args.backup:
            backup = source.with_name(source.name + ".bak")
            write_file(backup, original, mode)
        write_file(target, migrated, mode)
        written_to = source
    elif args.output is not None:
        written_to = Path(args.output)
        write_file(written_to, migrated, _mode_for_new(written_to, source))

    if args.json:
        report = json_report(migration, _mode_name(args), written_to, backup)
        if args.stdout:
            report["migrated"] = migration.migrated
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    elif args.check:
        sys.stdout.write(check_text(migration, args.stdin))
    elif args.stdout:
        _write_stdout(migrated)
        _print_notes(migration)
    elif args.write or args.output is not None:
        _print_notes(migration)
        _print_written(migration, written_to, backup)
    else:
        sys.stdout.write(migration.diff())
        _print_notes(migration)
        if migration.changed:
            how = f"retrain migrate-config {shlex.quote(label)} --write" if source else "--stdout or --output PATH"
            print(f"{_count(migration)}; write it with {how}", file=sys.stderr)
        else:
            print(f"{label}: no migration needed", file=sys.stderr)
    return 1 if args.check and migration.changed else 0


# ---------------------------------------------------------------------------------------
# Reading and writing


def write_file(path: Path, data: bytes, mode: int | None) -> None:
    """Write atomically (a temporary file renamed into place); ``mode`` None = umask default."""
    try:
        write_atomic(path, data, mode)
    except OSError as exc:
        raise ConfigError(ConfigIssue(str(path), "", "", f"cannot write the file ({exc.strerror})",
                                      "check the path and its permissions")) from exc


def _write_stdout(data: bytes) -> None:
    """The migrated bytes as they are (line endings included), not re-encoded by the console."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(data.decode("utf-8"))
        return
    sys.stdout.flush()
    buffer.write(data)
    buffer.flush()


def _mode_for_new(path: Path, source: Path | None) -> int | None:
    """Keep the permissions of the file being replaced, else of the input, else the umask default."""
    for candidate in (path, source):
        if candidate is not None and candidate.exists():
            return stat.S_IMODE(candidate.stat().st_mode)
    return None


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


# ---------------------------------------------------------------------------------------
# Reporting


def _mode_name(args: argparse.Namespace) -> str:
    if args.check:
        return "check"
    if args.write:
        return "write"
    if args.output is not None:
        return "output"
    if args.stdout:
        return "stdout"
    return "preview"


def json_report(migration: Migration, mode: str, written_to: Path | None, backup: Path | None) -> dict[str, object]:
    """The ``--json`` payload."""
    return {
        "path": migration.label,
        "mode": mode,
        "changed": migration.changed,
        "moved": [
            {"old": item.old, "new": item.new, "value": item.value, "old_line": item.old_line, "new_line": item.new_line}
            for item in migration.moved
        ],
        "conflicts": [
            {
                "old": item.old,
                "new": item.new,
                "legacy_value": item.legacy_value,
                "kept_value": item.kept_value,
                "old_line": item.old_line,
                "kept_line": item.kept_line,
                "resolution": "kept the existing [backend.options] value; the legacy key was removed",
            }
            for item in migration.dropped
        ],
        "diff": migration.diff(),
        "written_to": str(written_to) if written_to is not None else None,
        "backup": str(backup) if backup is not None else None,
    }


def _short(old_or_new: str) -> str:
    """backend.prime_rl_transport -> [backend] prime_rl_transport."""
    table, _, key = old_or_new.rpartition(".")
    return f"[{table}] {key}"


def _shown(value: object) -> str:
    return json.dumps(value, default=str)


def _count(migration: Migration) -> str:
    parts = [f"{len(migration.moved)} legacy key{'s' if len(migration.moved) != 1 else ''} to move"]
    if migration.dropped:
        parts.append(f"{len(migration.dropped)} to drop (already set in [backend.options])")
    return f"{migration.label}: " + ", ".join(parts)


def check_text(migration: Migration, from_stdin: bool) -> str:
    """What ``--check`` prints: the keys that need moving, or that none do."""
    if not migration.changed:
        return f"{migration.label}: no migration needed\n"
    lines = [f"{migration.label}: migration needed"]
    for item in migration.moved:
        lines.append(f"  line {item.old_line}: {_short(item.old)} -> {_short(item.new)}")
    for dropped in migration.dropped:
        lines.append(
            f"  line {dropped.old_line}: {_short(dropped.old)} = {_shown(dropped.legacy_value)} will be dropped: "
            f"{_short(dropped.new)} is already set to {_shown(dropped.kept_value)}"
        )
    how = "retrain migrate-config --stdin --stdout" if from_stdin else f"retrain migrate-config {shlex.quote(migration.label)} --write"
    lines.append(f"fix: run `{how}` (comments and layout are kept)")
    return "\n".join(lines) + "\n"


def _print_notes(migration: Migration) -> None:
    for item in migration.dropped:
        print(
            f"note: {migration.label}:{item.old_line}: dropped {_short(item.old)} = {_shown(item.legacy_value)}; "
            f"{_short(item.new)} is already set to {_shown(item.kept_value)} (line {item.kept_line}) and wins",
            file=sys.stderr,
        )


def _print_written(migration: Migration, written_to: Path | None, backup: Path | None) -> None:
    if written_to is None:
        print(f"{migration.label}: no migration needed; file left unchanged", file=sys.stderr)
        return
    moved = len(migration.moved)
    summary = f"moved {moved} key{'s' if moved != 1 else ''}" if migration.changed else "no migration needed"
    extra = f"; original saved as {backup}" if backup is not None else ""
    print(f"wrote {written_to} ({summary}){extra}", file=sys.stderr)
