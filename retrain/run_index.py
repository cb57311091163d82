"""Finding the runs and campaigns under a folder, and reading where each one stands.

``retrain status`` and ``retrain plot`` look at folders that runs may be writing at that
very moment, so reading one is cheap and never in a run's way: the last row of
``metrics.jsonl`` is read from the end of the file, the lock is tested without waiting,
and only stdlib modules are imported (no numpy, no config schema), so that a status of a
hundred runs answers in a fraction of a second.

A run folder holds ``metrics.jsonl``, or ``config.toml`` next to ``.retrain.lock`` (a run
that started but has not finished its first step). A campaign folder holds
``manifest.json``, which names its runs (``runs/<name>/`` inside it).

A run's state (``STATES``):

- ``running``: a process holds the run's lock (a run holds ``.retrain.lock`` exclusively
  for its whole life), or its campaign manifest says running and names a pid that is
  alive on this machine (a run that has started but not yet taken the lock);
- ``failed``: its campaign manifest says the process failed;
- ``done``: its last checkpoint (``trainer_state.json``, which a run writes after its
  last step) is of step ``max_steps``; without a trainer state, its last metrics row is;
  or its manifest says done;
- ``pending``: its manifest says pending and it has logged nothing;
- ``stale``: anything else: no process is running it and it did not finish (killed,
  interrupted, crashed, or the machine went down); ``retrain --resume DIR`` continues it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from retrain.errors import RetrainError

# The files a run writes (retrain.run_dirs and retrain.sinks name them too; those modules
# import numpy and the config schema, which would triple the time of a status).
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.toml"
LOCK_FILE = ".retrain.lock"
STATE_FILE = "trainer_state.json"
OWNER_FILE = ".retrain-run"  # marks an adapter folder: weights only, nothing to find inside
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.json"

STATES = ("pending", "running", "done", "failed", "stale")
# The last-row fields status shows; a row without one shows null.
SHOWN_METRICS = ("reward_mean", "correct_rate", "loss", "step_time_s")

# A run's own subfolders: checkpoints and weights, never another run.
RUN_SUBFOLDERS = frozenset({"checkpoints", "adapter", "wandb"})
SKIPPED_FOLDERS = frozenset({"__pycache__", "node_modules", "site-packages"})
# A metrics row is a few KB; the last one is almost always inside the last 16 KB.
TAIL_BYTES = 16384


@dataclass(frozen=True)
class ManifestEntry:
    """What a campaign manifest says about one of its runs."""

    name: str
    condition: str | None
    seed: int | None
    max_steps: int | None
    status: str | None
    pid: int | None
    host: str | None  # the machine the pid is on (None: not recorded)
    returncode: int | None

    @staticmethod
    def from_json(entry: Mapping[str, object]) -> ManifestEntry:
        log_dir = str(entry.get("log_dir", ""))
        return ManifestEntry(name=_text(entry.get("name")) or Path(log_dir).name,
                             condition=_text(entry.get("condition")),
                             seed=_integer(entry.get("seed")), max_steps=_integer(entry.get("max_steps")),
                             status=_text(entry.get("status")), pid=_integer(entry.get("pid")),
                             host=_text(entry.get("host")), returncode=_integer(entry.get("returncode")))


@dataclass
class RunInfo:
    """Where one run stands. ``step`` is its last logged step, ``checkpoint_step`` the
    step of its last checkpoint, ``updated`` the time (epoch seconds) its folder last
    changed; ``problems`` are files that could not be read."""

    path: Path
    name: str
    state: str
    step: int | None = None
    max_steps: int | None = None
    checkpoint_step: int | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    updated: float | None = None
    seed: int | None = None
    condition: str | None = None
    pid: int | None = None
    host: str | None = None
    manifest_status: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class CampaignInfo:
    """A campaign folder: its manifest's header and its runs, in manifest order."""

    path: Path
    name: str
    source: str | None = None
    created: str | None = None
    updated: str | None = None
    finished: bool = False  # summary.json is written when the campaign ends
    runs: list[RunInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {state: sum(run.state == state for run in self.runs) for state in STATES}

    def steps(self) -> tuple[int, int]:
        """(steps done, steps planned) over the runs whose ``max_steps`` is known."""
        known = [run for run in self.runs if run.max_steps is not None]
        done = sum(min(run.step or 0, run.max_steps or 0) for run in known)
        return done, sum(run.max_steps or 0 for run in known)


@dataclass
class Index:
    """Everything found under ``root``: campaigns, the runs outside any campaign, and
    the folders that could not be read."""

    root: Path
    campaigns: list[CampaignInfo]
    runs: list[RunInfo]
    unreadable: list[Path]


def index(root: Path) -> Index:
    """The runs and campaigns under ``root`` (``root`` itself included)."""
    if not root.exists():
        raise RetrainError(f"{root} does not exist — give a folder that holds runs (a log_dir, a campaign folder, or "
                           "a folder above them)")
    if not root.is_dir():
        raise RetrainError(f"{root} is a file, not a folder — give a folder that holds runs")
    run_dirs, campaign_dirs, unreadable = find_dirs(root)
    campaigns = [read_campaign(folder) for folder in campaign_dirs]
    claimed = {_key(run.path) for campaign in campaigns for run in campaign.runs}
    runs = [read_run(folder) for folder in run_dirs if _key(folder) not in claimed]
    return Index(root, campaigns, runs, unreadable)


def find_dirs(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(run folders, campaign folders, unreadable folders) under ``root``, sorted.

    Hidden folders, virtual environments, adapter folders and a run's own checkpoints
    are not searched; symbolic links are not followed (a link to a parent would loop)."""
    runs: list[Path] = []
    campaigns: list[Path] = []
    unreadable: list[Path] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except FileNotFoundError:
            continue  # removed since its parent was listed
        except PermissionError:
            unreadable.append(folder)
            continue
        names = {entry.name for entry in entries}
        if OWNER_FILE in names or "pyvenv.cfg" in names:
            continue
        if MANIFEST_FILE in names:
            campaigns.append(folder)
        is_run = METRICS_FILE in names or (CONFIG_FILE in names and LOCK_FILE in names)
        if is_run:
            runs.append(folder)
        for entry in entries:
            if (entry.name.startswith(".") or entry.name in SKIPPED_FOLDERS or (is_run and entry.name in RUN_SUBFOLDERS)
                    or not entry.is_dir(follow_symlinks=False)):
                continue
            pending.append(Path(entry.path))
    return sorted(runs), sorted(campaigns), sorted(unreadable)


def read_campaign(folder: Path) -> CampaignInfo:
    """A campaign from its manifest; a manifest that cannot be read is a problem of the
    campaign (its run folders are then listed as plain runs)."""
    campaign = CampaignInfo(path=folder, name=folder.name, finished=(folder / SUMMARY_FILE).exists())
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        campaign.problems.append(f"{MANIFEST_FILE} cannot be read: {exc}")
        return campaign
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        campaign.problems.append(f"{MANIFEST_FILE} is not a campaign manifest (no \"runs\" list)")
        return campaign
    if manifest.get("format") != 1:
        campaign.problems.append(f"{MANIFEST_FILE} has format {manifest.get('format')!r}; this retrain reads format 1")
    campaign.name = _text(manifest.get("campaign")) or folder.name
    campaign.source = _text(manifest.get("source"))
    campaign.created = _text(manifest.get("created"))
    campaign.updated = _text(manifest.get("updated"))
    for number, entry in enumerate(manifest["runs"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("log_dir"), str) or not entry["log_dir"]:
            campaign.problems.append(f"{MANIFEST_FILE}: runs[{number}] has no log_dir")
            continue
        campaign.runs.append(read_run(folder / entry["log_dir"], ManifestEntry.from_json(entry)))
    return campaign


def read_run(log_dir: Path, entry: ManifestEntry | None = None) -> RunInfo:
    """Where the run in ``log_dir`` stands, from its files and (in a campaign) what the
    manifest says about it."""
    run = RunInfo(path=log_dir, name=entry.name if entry else log_dir.name, state="stale")
    if entry is not None:
        run.condition, run.seed, run.manifest_status = entry.condition, entry.seed, entry.status
        run.pid, run.host = entry.pid, entry.host
        run.max_steps = entry.max_steps
    training = _training_settings(log_dir / CONFIG_FILE, run.problems)
    # The snapshot is what the run really does (a resume may have raised max_steps).
    run.max_steps = _integer(training.get("max_steps")) or run.max_steps
    run.seed = run.seed if run.seed is not None else _integer(training.get("seed"))
    row = _last_row_or_problem(log_dir / METRICS_FILE, run.problems)
    if row is not None:
        run.step = _integer(row.get("step"))
        run.metrics = {name: _number(row.get(name)) for name in SHOWN_METRICS}
    run.checkpoint_step = _checkpoint_step(log_dir / STATE_FILE, run.problems)
    run.updated = _updated(log_dir)
    run.state = run_state(locked=lock_held(log_dir / LOCK_FILE), finished=_finished(run), logged=row is not None,
                          entry=entry)
    return run


def run_state(*, locked: bool, finished: bool, logged: bool, entry: ManifestEntry | None) -> str:
    """One of ``STATES``; see the module docstring. The lock outranks the manifest: a
    manifest that says running about a dead process is stale."""
    if locked:
        return "running"
    status = entry.status if entry else None
    if status == "running" and entry is not None and entry.pid is not None and _here(entry.host) \
            and pid_alive(entry.pid):
        return "running"
    if status == "failed":
        return "failed"
    if finished or status == "done":
        return "done"
    if status == "pending" and not logged:
        return "pending"
    return "stale"


def _finished(run: RunInfo) -> bool:
    if run.max_steps is None:
        return False
    if run.checkpoint_step is not None:
        return run.checkpoint_step >= run.max_steps
    return run.step is not None and run.step >= run.max_steps


def lock_held(lock_path: Path) -> bool:
    """Whether a process holds ``lock_path`` (a run's ``.retrain.lock``), tested with a
    shared lock that is given back at once and never waited for."""
    try:
        lock = open(lock_path, "rb")  # noqa: SIM115 - closed below, after the test
    except (FileNotFoundError, PermissionError):
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            # A filesystem without flock (some network filesystems): runs there run
            # unlocked too (run_dirs.claim_output_dirs), so no lock is ever held.
            return False
    return False


def _here(host: str | None) -> bool:
    """Whether a pid recorded on ``host`` can be tested on this machine (a campaign's runs
    may run on several machines sharing its folder; there only the lock tells)."""
    return host is None or host == socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 tests without sending anything)."""
    if pid <= 0:
        return False  # 0 and negative ids name process groups
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


def read_last_row(path: Path) -> dict[str, object] | None:
    """The last complete row of a JSONL log, read from the end of the file; None when
    the log is empty or missing. A torn last line (no newline yet) is not a row.
    Raises ``ValueError`` when that row is not a JSON object."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return None
    with file:
        end = file.seek(0, os.SEEK_END)
        size = TAIL_BYTES
        while True:
            start = max(0, end - size)
            file.seek(start)
            data = file.read(end - start)
            last_newline = data.rfind(b"\n")
            before = data.rfind(b"\n", 0, max(last_newline, 0))
            if last_newline >= 0 and (before >= 0 or start == 0):
                break
            if start == 0:
                return None  # one torn line, or nothing at all
            size *= 4  # the last row is longer than what was read: read more
    row = json.loads(data[before + 1:last_newline])
    if not isinstance(row, dict):
        raise ValueError(f"its last row is a {type(row).__name__}, not an object")
    return row


def read_rows(path: Path) -> list[dict[str, object]]:
    """Every complete row of a JSONL log (a torn last line is skipped); a row that is
    not JSON is a ``RetrainError`` naming its line."""
    rows = []
    lines = path.read_bytes().split(b"\n")
    # The last piece is empty after a final newline, or else a torn row: never a row.
    for number, line in enumerate(lines[:-1], start=1):
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise RetrainError(f"{path}:{number} is not a JSON row ({exc}) — the log is damaged; remove that "
                               "line to read the others") from exc
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _last_row_or_problem(path: Path, problems: list[str]) -> dict[str, object] | None:
    try:
        return read_last_row(path)
    except (OSError, ValueError) as exc:
        problems.append(f"{METRICS_FILE}: last row cannot be read ({exc})")
        return None


def _training_settings(path: Path, problems: list[str]) -> Mapping[str, object]:
    """The ``[training]`` table of a run's config snapshot ({} when there is none yet).

    Only that table is parsed when it can be cut out on its own: the whole snapshot has
    some 150 settings, and parsing them all would be most of the time of a status."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{CONFIG_FILE} cannot be read: {exc}")
        return {}
    training = _training_section(text)
    if training is not None:
        return training
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{CONFIG_FILE} cannot be read: {exc}")
        return {}
    table = config.get("training")
    return table if isinstance(table, dict) else {}


def _training_section(text: str) -> dict[str, object] | None:
    """The ``[training]`` table parsed from its own lines (from its header to the next
    line that starts a table), or None when it cannot be cut out that way: no such
    header, a cut inside a value (a line of a multi-line array that starts with "["),
    or no max_steps in it. The whole file then decides."""
    start = 0 if text.startswith("[training]\n") else text.find("\n[training]\n")
    if start < 0:
        return None
    end = text.find("\n[", start + 1)
    try:
        table = tomllib.loads(text[start:end if end >= 0 else len(text)]).get("training")
    except tomllib.TOMLDecodeError:
        return None  # cut inside a value: the whole file decides
    return table if isinstance(table, dict) and "max_steps" in table else None


def _checkpoint_step(path: Path, problems: list[str]) -> int | None:
    try:
        state = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problems.append(f"{STATE_FILE} cannot be read: {exc}")
        return None
    return _integer(state.get("step")) if isinstance(state, dict) else None


def _updated(log_dir: Path) -> float | None:
    """When the run last wrote something that status reads: its newest metrics row, or
    else its config snapshot or lock (a run before its first step)."""
    for name in (METRICS_FILE, CONFIG_FILE, LOCK_FILE):
        try:
            return (log_dir / name).stat().st_mtime
        except FileNotFoundError:
            continue
    return None


def _key(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
