"""The ``retrain`` command line.

``retrain [CONFIG] [--flag value ...]`` trains; other subcommands inspect and rewrite
configs. Each subcommand lives in ``retrain.commands.<name>`` with ``DESCRIPTION`` and
``main(argv) -> int``, and is imported only when it runs, so ``retrain --help`` and the
config commands never import torch, transformers or peft.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import select
import sys
from pathlib import Path

from retrain import __version__
from retrain.errors import RetrainError, UsageError

# Subcommand -> (module, one-line description). "train" is the default command.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("retrain.commands.train", "train with a config (the default: `retrain config.toml`)"),
    "explain": ("retrain.commands.explain", "validate a config and show what it resolves to, loading no model"),
    "init": ("retrain.commands.init", "write a commented starter config"),
    "migrate-config": ("retrain.commands.migrate_config", "rewrite legacy config keys (preview, --check, --write)"),
    "plugins": ("retrain.commands.plugins", "list built-in and discovered plugins"),
    "init-plugin": ("retrain.commands.init_plugin", "write a plugin scaffold (and its test)"),
    "status": ("retrain.commands.status", "show the runs and campaigns under a folder (--json, --watch)"),
    "plot": ("retrain.commands.plot", "plot a run's or a campaign's reward curves (-o file.png, else sparklines)"),
}

USAGE = """usage: retrain [CONFIG] [--setting value ...]
       retrain <command> [args]

TOML-driven RL post-training for LLMs. With no command, trains with CONFIG
(default ./retrain.toml); every setting can be overridden as --flag value,
e.g. retrain config.toml --lr 1e-4 --batch-size 4 --advantage-mode grpo.

commands:
{commands}

options:
  -h, --help     show this help (`retrain train --help` lists every setting flag)
  --version      print the version

Environment: a .env file in the working directory is loaded first (it never
replaces variables already set); RETRAIN_<SECTION>__<KEY> sets any setting;
RETRAIN_DEBUG=1 shows tracebacks for errors.
"""


def usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    commands = "\n".join(f"  {name.ljust(width)}  {description}" for name, (_, description) in SUBCOMMANDS.items())
    return USAGE.format(commands=commands)


def load_dotenv_file(directory: Path | None = None) -> None:
    """Load ``.env`` from the working directory without replacing variables already set."""
    path = (directory or Path.cwd()) / ".env"
    if not path.is_file():
        return
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}) — save it as UTF-8, or remove "
                         "it") from exc
    for name, value in values.items():
        if value is not None and name not in os.environ:
            os.environ[name] = value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# The exit status of a process killed by SIGPIPE, as a shell reports it (128 + 13).
BROKEN_PIPE_EXIT_CODE = 141


def stdout_is_closed() -> bool:
    """Whether the reader of stdout has gone away (``retrain explain | head -1``).

    Told apart by polling the descriptor rather than by the exception alone, so that a
    broken pipe from a socket (an engine or judge connection) still surfaces as an error.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def main(argv: list[str] | None = None) -> int:
    """Run a command; a reader that closes stdout early ends it quietly (exit 141)."""
    try:
        code = run_command(argv)
        # Flushed here, not at interpreter exit, so that a closed pipe is caught below.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not stdout_is_closed():
            raise
        # The interpreter flushes stdout once more at exit; point the descriptor at
        # /dev/null so that flush has somewhere to go instead of raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE_EXIT_CODE


def run_command(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # First: RETRAIN_LOG_LEVEL, RETRAIN_DEBUG and RETRAIN_CACHE_DIR may be set in .env too.
        load_dotenv_file()
    except RetrainError as exc:
        print(f"retrain: {exc}", file=sys.stderr)
        return exc.exit_code
    level = os.environ.get("RETRAIN_LOG_LEVEL", "WARNING").strip().upper() or "WARNING"
    if level not in LOG_LEVELS:
        print(f"retrain: RETRAIN_LOG_LEVEL={os.environ['RETRAIN_LOG_LEVEL']!r} is not a log level — use one of "
              f"{', '.join(LOG_LEVELS)}, or unset it", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if args[:1] == ["--version"]:
        print(f"retrain {__version__}")
        return 0
    command = "train"
    if args and args[0] in SUBCOMMANDS:
        command = args.pop(0)
    elif args and not args[0].startswith("-") and not args[0].endswith(".toml") and not Path(args[0]).exists():
        from retrain.config.values import did_you_mean

        hint = did_you_mean(args[0], SUBCOMMANDS, "")
        if hint:
            print(f"retrain: unknown command '{args[0]}' — {hint}", file=sys.stderr)
            return 2
    module_name, _ = SUBCOMMANDS[command]
    try:
        module = importlib.import_module(module_name)
        return int(module.main(args))
    except RetrainError as exc:
        if os.environ.get("RETRAIN_DEBUG"):
            raise
        print(f"retrain: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        with contextlib.suppress(OSError):  # a terminal closed by SIGHUP cannot be written to
            print("retrain: interrupted", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))


def entry() -> None:
    """The ``retrain`` command: ``main``, then exit with its code.

    A run stopped by a signal (exit code 128 + signal) has closed everything it opened;
    it leaves at once rather than through the interpreter's teardown, which with torch
    loaded takes seconds (measured: 1.5 s idle, 6 s on a busy 2-core machine) that a job
    being stopped by its scheduler may not have."""
    code = main()
    if code >= 128:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
