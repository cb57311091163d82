"""``retrain status [DIR] [--json] [--watch [SECONDS]]``: where every run under a folder stands.

Finds every run folder and campaign folder under DIR (default: the working directory;
retrain/run_index.py says what counts as one and how a state is decided) and shows, per
run, its state, its progress against ``max_steps``, the last step's reward, correct rate,
loss and step time, and how long ago it last wrote. A campaign gets one line with its
runs counted per state and its steps done, then its runs, indented. ``--json`` prints one
JSON document (its schema is in docs/status-and-plots.md); ``--watch`` redraws every
SECONDS (default 2) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from retrain.errors import UsageError
from retrain.run_index import SHOWN_METRICS, STATES, CampaignInfo, Index, RunInfo, index

DESCRIPTION = "show the state and progress of the runs and campaigns under a folder"

JSON_FORMAT = 1
DEFAULT_WATCH_SECONDS = 2.0
HEADER = ("RUN", "STATE", "STEP", "REWARD", "CORRECT", "LOSS", "STEP_S", "UPDATED")
STATES_HELP = """states:
  running   a process holds the run's lock (.retrain.lock)
  done      its last checkpoint is of step max_steps
  failed    its campaign manifest says the process failed
  pending   a campaign run not started yet
  stale     not running and not finished (killed, interrupted, crashed):
            `retrain --resume DIR` continues it

Details and the --json schema: docs/status-and-plots.md"""
# The clear-screen sequence for a terminal: home the cursor, erase the screen.
CLEAR_SCREEN = "\x1b[H\x1b[2J"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"status: {message} (see `retrain status --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="retrain status", usage="retrain status [DIR] [--json] [--watch [SECONDS]]",
                     description=f"{DESCRIPTION}.", epilog=STATES_HELP,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", nargs="?", default=".", metavar="DIR",
                        help="folder to search for runs and campaigns (default: .)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--watch", type=_seconds, metavar="SECONDS",
                        help=f"redraw every SECONDS (default {DEFAULT_WATCH_SECONDS:g}) until Ctrl-C")
    return parser


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--watch takes a number of seconds, not {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"--watch takes a positive number of seconds, not {text!r}")
    return seconds


def parse_args(argv: list[str]) -> argparse.Namespace:
    """argparse cannot take an optional value that may be left out before a positional
    (``--watch logs`` would read "logs" as the seconds), so a bare ``--watch`` gets its
    default here: only a number right after it is its value."""
    given = []
    for position, arg in enumerate(argv):
        given.append(arg)
        if arg == "--watch" and not _is_number(argv[position + 1] if position + 1 < len(argv) else ""):
            given[-1] = f"--watch={DEFAULT_WATCH_SECONDS:g}"
    return _parser().parse_args(given)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    root = Path(args.dir)
    if args.watch is None:
        sys.stdout.write(render(index(root), args.dir, as_json=args.json))
        return 0
    return watch(root, args.dir, args.watch, as_json=args.json, out=sys.stdout)


def render(found: Index, shown_root: str, as_json: bool, now: float | None = None) -> str:
    now = time.time() if now is None else now
    if as_json:
        return json.dumps(status_json(found, now), indent=2) + "\n"
    return status_text(found, shown_root, now)


def watch(root: Path, shown_root: str, seconds: float, as_json: bool, out: TextIO) -> int:
    """Redraw every ``seconds`` until Ctrl-C, which ends it with exit 0. In a terminal the
    screen is cleared first; elsewhere each view follows the last (JSON: one per line)."""
    clear = out.isatty() and not as_json
    try:
        while True:
            found = index(root)
            if as_json:
                text = json.dumps(status_json(found, time.time()), separators=(",", ":")) + "\n"
            else:
                stamp = datetime.now().strftime("%H:%M:%S")
                text = f"every {seconds:g}s, Ctrl-C to stop — {stamp}\n{status_text(found, shown_root, time.time())}"
            # Drawn in one write after the index is read, so the screen is never blank for long.
            out.write((CLEAR_SCREEN if clear else "") + text + ("" if clear or as_json else "\n"))
            out.flush()
            time.sleep(seconds)
    except KeyboardInterrupt:
        return 0


def status_text(found: Index, shown_root: str, now: float) -> str:
    """A table: runs outside any campaign, then each campaign's line and its runs."""
    if not found.runs and not found.campaigns:
        return f"no runs or campaigns under {shown_root}\n" + _unreadable_lines(found)
    table: list[tuple[str, ...] | str] = [HEADER]
    for run in found.runs:
        table.append(_run_cells(run, _shown_path(run.path, found.root, shown_root), now))
        table.extend(f"    ! {problem}" for problem in run.problems)
    for campaign in found.campaigns:
        table.append(campaign_line(campaign, _shown_path(campaign.path, found.root, shown_root)))
        table.extend(f"    ! {problem}" for problem in campaign.problems)
        for run in campaign.runs:
            table.append(_run_cells(run, f"  {run.name}", now))
            table.extend(f"      ! {problem}" for problem in run.problems)
    return _aligned(table) + _unreadable_lines(found)


def campaign_line(campaign: CampaignInfo, shown: str) -> str:
    counts = campaign.counts()
    parts = ", ".join(f"{counts[state]} {state}" for state in STATES if counts[state])
    done, planned = campaign.steps()
    progress = f"steps {done}/{planned} ({done / planned:.0%})" if planned else "steps ?"
    ended = ", finished (summary.json)" if campaign.finished else ""
    runs = f"{len(campaign.runs)} run{'s' if len(campaign.runs) != 1 else ''}"
    return f"campaign {campaign.name} ({shown}): {runs}{': ' + parts if parts else ''}; {progress}{ended}"


def _run_cells(run: RunInfo, shown: str, now: float) -> tuple[str, ...]:
    metrics = run.metrics
    return (shown, run.state, _progress(run), _formatted(metrics.get("reward_mean"), ".3f"),
            _formatted(metrics.get("correct_rate"), ".3f"), _formatted(metrics.get("loss"), ".4g"),
            _formatted(metrics.get("step_time_s"), ".3g"), format_age(now - run.updated) if run.updated else "-")


def _progress(run: RunInfo) -> str:
    step = "-" if run.step is None else str(run.step)
    return f"{step}/{'?' if run.max_steps is None else run.max_steps}"


def _formatted(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_age(seconds: float) -> str:
    """``12s ago``, ``5m ago``, ``3h ago``, ``2d ago``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _aligned(table: list[tuple[str, ...] | str]) -> str:
    """Rows of cells padded to common column widths; plain strings (campaign lines,
    problems) are printed as they are, between the rows."""
    rows = [row for row in table if isinstance(row, tuple)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADER))]
    lines = []
    for row in table:
        if isinstance(row, str):
            lines.append(row)
            continue
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines) + "\n"


def _unreadable_lines(found: Index) -> str:
    return "".join(f"! {folder}: not readable by this user, not searched\n" for folder in found.unreadable)


def _shown_path(path: Path, root: Path, shown_root: str) -> str:
    """``path`` as the user would type it: under the DIR they gave, as they gave it."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return str(path)
    return os.path.normpath(os.path.join(shown_root, relative))


def status_json(found: Index, now: float) -> dict[str, object]:
    """The ``--json`` document (docs/status-and-plots.md); paths are relative to ``root``
    where they lie under it."""
    root = found.root.absolute()
    return {
        "format": JSON_FORMAT,
        "root": str(root),
        "time": _iso(now),
        "runs": [run_json(run, found.root, now) for run in found.runs],
        "campaigns": [campaign_json(campaign, found.root, now) for campaign in found.campaigns],
        "unreadable": [_relative(folder, found.root) for folder in found.unreadable],
    }


def run_json(run: RunInfo, root: Path, now: float) -> dict[str, object]:
    progress = run.step / run.max_steps if run.step is not None and run.max_steps else None
    return {
        "path": _relative(run.path, root), "name": run.name, "state": run.state,
        "step": run.step, "max_steps": run.max_steps, "progress": progress, "checkpoint_step": run.checkpoint_step,
        "metrics": {name: run.metrics.get(name) for name in SHOWN_METRICS},
        "updated": _iso(run.updated) if run.updated is not None else None,
        "age_s": round(now - run.updated, 3) if run.updated is not None else None,
        "seed": run.seed, "condition": run.condition, "pid": run.pid, "host": run.host,
        "manifest_status": run.manifest_status,
        "problems": list(run.problems),
    }


def campaign_json(campaign: CampaignInfo, root: Path, now: float) -> dict[str, object]:
    done, planned = campaign.steps()
    return {
        "path": _relative(campaign.path, root), "name": campaign.name, "source": campaign.source,
        "created": campaign.created, "updated": campaign.updated, "finished": campaign.finished,
        "counts": campaign.counts(), "steps": done, "max_steps": planned,
        "progress": done / planned if planned else None,
        "runs": [run_json(run, root, now) for run in campaign.runs],
        "problems": list(campaign.problems),
    }


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return str(path.absolute())


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
