"""The folders a run writes, and claiming them: a run locks its ``log_dir`` for as long
as it runs and records itself in an adapter folder outside it, so two runs never write
into one folder, and a fresh run refuses a folder that holds an earlier run's
checkpoints rather than mixing its own with them (docs/checkpoints.md, "One run per
folder")."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import IO

from retrain.atomic import write_atomic
from retrain.config.schema import Config
from retrain.errors import ConfigIssue, RetrainError
from retrain.run_index import LOCK_FILE, lock_held
from retrain.sinks import METRICS_FILE
from retrain.sinks.jsonl import read_rows

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.toml"
OWNER_FILE = ".retrain-run"


def claim_output_dirs(config: Config, resuming: bool) -> IO[str]:
    """Create ``log_dir`` and the adapter folder and claim them for this run.

    Returns the open lock file; the run holds an exclusive ``flock`` on it until it ends,
    so two processes never append to one run. The adapter folder records which run owns
    it: several runs sharing one ``adapter_path`` (a fixed path such as the default
    ``/tmp/retrain_adapter``) would overwrite each other's checkpoints.
    """
    log_dir = Path(config.logging.log_dir)
    if not resuming and (log_dir / STATE_FILE).exists():
        raise RetrainError(
            f"{log_dir} already holds a run (it has {STATE_FILE}); nothing was changed — continue it with "
            f"`--resume {log_dir}`, or choose another --log-dir"
        )
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        lock = open(log_dir / LOCK_FILE, "a")  # noqa: SIM115 - held open for the whole run
    except OSError as exc:
        raise RetrainError(f"cannot use [logging] log_dir {log_dir}: {exc.strerror or exc} — "
                           "choose a folder this user can create and write to") from exc
    try:
        _lock_exclusively(lock)
    except BlockingIOError:
        lock.close()
        raise RetrainError(f"another retrain process is running in {log_dir} — let it finish (or stop it), "
                           "or choose another --log-dir") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
            lock.close()
            raise
        # Some network filesystems have no flock; running unlocked beats not running.
        logger.warning("the filesystem of %s cannot lock files (%s); make sure no other retrain process uses "
                       "this folder", log_dir, exc.strerror)
    try:
        _claim_adapter_dir(adapter_dir(config), log_dir, fresh=not resuming)
    except BaseException:
        lock.close()
        raise
    return lock


def _lock_exclusively(lock: IO[str], attempts: int = 5, pause_s: float = 0.02) -> None:
    """``flock(LOCK_EX | LOCK_NB)``, tried a few times: ``retrain status`` and campaigns
    test whether a run is live by taking a shared lock for an instant, which must not make
    a run that starts at that instant believe another run holds its folder."""
    import fcntl
    import time

    for attempt in range(attempts):
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s)


def _claim_adapter_dir(adapters: Path, log_dir: Path, fresh: bool) -> None:
    owner_file = adapters / OWNER_FILE
    me = log_dir.resolve()
    try:
        adapters.mkdir(parents=True, exist_ok=True)
        owner = owner_file.read_text().strip() if owner_file.is_file() else ""
        # A folder inside this run's own log_dir (e.g. "{log_dir}/adapter") is its own,
        # even when the marker still names the run this folder was copied from.
        inside_mine = adapters.resolve().is_relative_to(me)
        if owner and Path(owner) != me and not inside_mine and _run_exists(Path(owner)):
            raise RetrainError(
                f"[backend] adapter_path {adapters} holds the adapters of the run in {owner}, which this run would "
                "overwrite — give each run its own folder: adapter_path = \"{log_dir}/adapter\" (a resumed run "
                "may move its adapters with --backend-adapter-path DIR)"
            )
        if fresh:
            refuse_earlier_checkpoints(log_dir, adapters, adapters_mine=inside_mine or Path(owner) == me)
        write_atomic(owner_file, f"{me}\n")
    except OSError as exc:
        raise RetrainError(f"cannot write [backend] adapter_path {adapters}: {exc.strerror or exc} — "
                           "choose a folder this user can create and write to") from exc


def refuse_earlier_checkpoints(log_dir: Path, adapters: Path, adapters_mine: bool, remove: bool = True) -> None:
    """A fresh run (``log_dir`` has no trainer_state.json) must not mix its checkpoints
    with those of an earlier run: ``checkpoints/step_*`` in ``log_dir``, or
    ``checkpoint_step_*`` and ``final`` in the adapter folder, refuse the folder.

    The one exception is the unfinished first checkpoint of an earlier attempt in this
    very folder, killed before it wrote trainer_state.json: that attempt's rows are
    replaced by the new run (``truncate_after(0)``), and these pieces are removed here.
    It is recognised by its shape: a single ``checkpoints/step_N``, at most the adapter
    ``checkpoint_step_N`` of the same step (in a folder this run owns), no ``final``, and
    a metrics log whose last row is step N (the step a checkpoint follows at once).
    ``remove = False`` (``retrain explain``) only checks."""
    step_dirs = sorted(path for path in (log_dir / "checkpoints").glob("step_*") if path.is_dir())
    saved = sorted(path for path in adapters.glob("checkpoint_step_*") if path.is_dir())
    if (adapters / "final").exists():
        saved.append(adapters / "final")
    if not step_dirs and not saved:
        return
    if _unfinished_first_checkpoint(log_dir, step_dirs, saved, adapters_mine):
        if not remove:
            return
        logger.warning("removing %s: the unfinished first checkpoint of an earlier attempt in %s (it never wrote %s); "
                       "this run starts over", ", ".join(str(path) for path in (*step_dirs, *saved)), log_dir,
                       STATE_FILE)
        for path in (*saved, *step_dirs):
            shutil.rmtree(path)
        return
    found = [*step_dirs, *saved]
    shown = ", ".join(str(path) for path in found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
    raise RetrainError(
        f"{log_dir} has no {STATE_FILE} (nothing to resume), but holds the checkpoints of an earlier run: {shown}; "
        "a new run would mix its checkpoints with them, so nothing was changed — start it in a new --log-dir (with "
        "adapter_path = \"{log_dir}/adapter\"), or delete those folders to start over here"
    )


def _unfinished_first_checkpoint(log_dir: Path, step_dirs: list[Path], saved: list[Path], adapters_mine: bool) -> bool:
    if len(step_dirs) != 1 or (saved and not adapters_mine):
        return False
    step = step_dirs[0].name.removeprefix("step_")
    if any(path.name != f"checkpoint_step_{step}" for path in saved):
        return False
    rows = read_rows(log_dir / METRICS_FILE, warn_torn=False)
    return bool(rows) and str(rows[-1].get("step")) == step


def _run_exists(log_dir: Path) -> bool:
    """Whether ``log_dir`` holds a run: one that has checkpointed or started, or one
    that is running now (it holds the lock, possibly before writing anything else)."""
    if (log_dir / STATE_FILE).exists() or (log_dir / CONFIG_FILE).exists():
        return True
    return lock_held(log_dir / LOCK_FILE)


def output_dir_issues(config: Config) -> list[ConfigIssue]:
    """Whether ``[logging] log_dir`` and the adapter folder could be created and written,
    judged from the nearest folder that exists (so ``explain`` can tell, creating nothing),
    and, for a new run, whether they hold an earlier run it would refuse to mix with."""
    issues = _earlier_run_issues(config)
    for section, key, folder in (("logging", "log_dir", Path(config.logging.log_dir)),
                                 ("backend", "adapter_path", adapter_dir(config))):
        existing = next((parent for parent in (folder, *folder.absolute().parents) if parent.exists()), None)
        if existing is None:
            continue
        if not existing.is_dir():
            issues.append(ConfigIssue("", section, key, f"{folder} cannot be created: {existing} is a file",
                                      "choose a folder this user can create and write to"))
        elif not os.access(existing, os.W_OK | os.X_OK):
            issues.append(ConfigIssue("", section, key, f"{folder} cannot be written: {existing} is not writable by "
                                      "this user", "choose a folder this user can create and write to"))
    return issues


def _earlier_run_issues(config: Config) -> list[ConfigIssue]:
    """What ``claim_output_dirs`` would refuse for a new run, found without changing anything."""
    log_dir, adapters = Path(config.logging.log_dir), adapter_dir(config)
    if config.resume.from_ or not log_dir.is_dir():
        return []
    if (log_dir / STATE_FILE).exists():
        return [ConfigIssue("", "logging", "log_dir", f"{log_dir} already holds a run (it has {STATE_FILE})",
                            f"continue it with `--resume {log_dir}`, or choose another --log-dir")]
    owner_file = adapters / OWNER_FILE
    owner = owner_file.read_text().strip() if owner_file.is_file() else ""
    mine = adapters.absolute().is_relative_to(log_dir.absolute()) or (bool(owner) and Path(owner) == log_dir.resolve())
    try:
        refuse_earlier_checkpoints(log_dir, adapters, adapters_mine=mine, remove=False)
    except RetrainError as error:
        return [ConfigIssue("", "logging", "log_dir", str(error))]
    return []


def adapter_dir(config: Config) -> Path:
    """``[backend] adapter_path``, with ``{log_dir}`` replaced by ``[logging] log_dir``."""
    return Path(config.backend.adapter_path.replace("{log_dir}", config.logging.log_dir))
