"""Checkpoints: everything a run needs to continue where it stopped (DESIGN §7).

A checkpoint of step N is ``<log_dir>/checkpoints/step_N/`` holding ``backend/`` (the
backend's ``save_state``: weights, optimizer, its RNGs) and ``engine/`` (the engine's:
its sampler RNG), the adapter ``<adapter_path>/checkpoint_step_N``, and, written last and
atomically as the commit point, ``<log_dir>/trainer_state.json``: the step, the seed, the
prompt cursor, the credit pipeline's state (SEPA), Python's and numpy's RNG states, the
policy version and the wandb run id. A run killed at any moment resumes from the last
complete checkpoint; the pieces of a newer, unfinished one are ignored. A checkpoint that
fails (a full disk: ``DiskFullError``) removes its own pieces, leaving the previous one in
force. Before a resume, the checkpoint folder and the logs are checked against the state
(``check_checkpoint_files``, ``check_logs``): logs that mix runs are refused, lost rows
are reported.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from retrain.atomic import (
    disk_full_errno,
    disk_full_error,
    format_bytes,
    raise_if_disk_full,
    tree_bytes,
    write_atomic,
)
from retrain.errors import RetrainError
from retrain.run_dirs import STATE_FILE
from retrain.sinks import GENERATIONS_FILE, METRICS_FILE
from retrain.sinks.jsonl import read_rows, step_of
from retrain.step import Run

logger = logging.getLogger(__name__)

STATE_VERSION = 2
BACKEND_STATE = "backend"
ENGINE_STATE = "engine"


def rng_state() -> dict[str, object]:
    """Python's and numpy's global generator states, as JSON data."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=True)
    if not isinstance(numpy_state, tuple):
        raise TypeError("numpy returned its RNG state as a dict despite legacy=True")
    return {
        "python": [version, list(internal), gauss],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }


def restore_rng_state(state: Mapping[str, object]) -> None:
    python = state["python"]
    numpy_state = state["numpy"]
    if not isinstance(python, list) or not isinstance(numpy_state, list):
        raise TypeError("the saved RNG states are not lists")
    version, internal, gauss = python
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = numpy_state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


def save_checkpoint(run: Run, step: int, extra: Mapping[str, object]) -> Path:
    """Write backend and engine state, the adapter and (last, atomically) the trainer state.

    A checkpoint that fails part way (a full disk, a signal) removes what it wrote of
    itself and leaves the previous checkpoint in force; a full disk or quota is a
    ``DiskFullError`` naming the path, the free space and the size of the previous
    checkpoint's piece that did not fit."""
    checkpoints = run.log_dir / "checkpoints"
    final_dir = checkpoints / f"step_{step}"
    staging = checkpoints / f".step_{step}.partial"
    adapter = run.adapter_dir / f"checkpoint_step_{step}"
    previous = _previous_step(checkpoints, final_dir)
    # The folder being written, and the same piece of the previous checkpoint (its size is
    # roughly what the write needs).
    writing, piece = checkpoints, f"step_{previous}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        run.backend.save_state(staging / BACKEND_STATE)
        run.engine.save_state(staging / ENGINE_STATE)
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(staging, final_dir)
        writing, piece = run.adapter_dir, f"checkpoint_step_{previous}"
        run.backend.save_adapter(adapter)
        writing, piece = run.log_dir, ""
        run.sinks.sync()  # no logged row may be newer than the state on disk
        state = {
            "version": STATE_VERSION,
            "step": step,
            "seed": run.seed,
            "checkpoint": str(final_dir.relative_to(run.log_dir)),
            "adapter": _relative_to(adapter, run.log_dir),
            "data": run.collector.state_dict(),
            "credit": run.credit.state_dict(),
            "observers": {observer.name: observer.state_dict() for observer in run.observers},
            "rng": rng_state(),
            "policy_version": run.backend.policy_version,
            "wandb_run_id": run.sinks.wandb_run_id,
            **extra,
        }
        write_atomic(run.log_dir / STATE_FILE, json.dumps(state, indent=1))
    except BaseException as exc:
        full = disk_full_errno(exc, writing)  # judged before the partial pieces are removed
        # The adapter first: a kill in between must not leave an adapter without its state.
        for written in (adapter, final_dir, staging):
            shutil.rmtree(written, ignore_errors=True)
        if full is not None:
            kept = (f"continue with `retrain --resume {run.log_dir}` (checkpoint {previous} is intact)"
                    if previous is not None else "run the same command again (nothing was checkpointed yet)")
            needed = _previous_size(writing / piece if previous is not None else None) if piece else ""
            raise disk_full_error(exc, writing, full, what=f"cannot write checkpoint {step}", needed=needed,
                                  then=kept) from exc
        raise
    for old in checkpoints.glob("step_*"):
        if old != final_dir:
            shutil.rmtree(old, ignore_errors=True)
    return final_dir


def save_final_adapter(run: Run) -> Path:
    """Write the policy after the last step to ``<adapter_path>/final``; a full disk is a
    ``DiskFullError`` (every step is checkpointed by then: a resume writes it)."""
    final = run.adapter_dir / "final"
    try:
        run.backend.save_adapter(final)
    except Exception as exc:
        newest = max(run.adapter_dir.glob("checkpoint_step_*"), key=_step_number, default=None)
        raise_if_disk_full(exc, run.adapter_dir, what=f"cannot write the final adapter {final}",
                           needed=_previous_size(newest) if newest else "",
                           then=f"`retrain --resume {run.log_dir}` writes it (every step is checkpointed already)")
        raise
    return final


def _step_number(path: Path) -> int:
    digits = path.name.rpartition("_")[2]
    return int(digits) if digits.isdigit() else -1


def _previous_step(checkpoints: Path, current: Path) -> int | None:
    """The step of the newest complete checkpoint folder other than ``current``."""
    steps = [_step_number(path) for path in checkpoints.glob("step_*") if path != current and path.is_dir()]
    return max((step for step in steps if step >= 0), default=None)


def _previous_size(piece: Path | None) -> str:
    """Roughly what a piece of a checkpoint needs: the size of the same piece of the
    previous one (``piece``; None before the first checkpoint)."""
    if piece is None:
        return ("how much it needs is known only after a first checkpoint (roughly three times the trainable "
                "weights, optimizer moments included, plus the adapter)")
    size = tree_bytes(piece)
    return f"it needs about {format_bytes(size)} (the size of the previous checkpoint's {piece.name})" if size else ""


def _relative_to(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it (a moved run folder stays whole), else absolute."""
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path.absolute())


def read_trainer_state(log_dir: Path) -> dict[str, object]:
    path = log_dir / STATE_FILE
    if not path.is_file():
        raise RetrainError(f"cannot resume: {path} does not exist — give the log_dir of a run that saved a checkpoint")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RetrainError(f"cannot resume: {path} is not valid JSON ({exc.msg})") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise RetrainError(f"cannot resume: {path} was not written by this version of retrain — resume with the "
                           "version that wrote it, or start a fresh run")
    expected = {"step": int, "seed": int, "checkpoint": str, "data": dict, "credit": dict, "rng": dict,
                "policy_version": int}
    wrong = [key for key, kind in expected.items() if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool)]
    if "step" not in wrong and state["step"] < 1:
        wrong.append("step")
    if wrong:
        raise RetrainError(f"cannot resume: {path} is damaged ({', '.join(wrong)} missing or of the wrong type) — "
                           "resume from a copy of the run, or start a fresh run")
    check_checkpoint_files(log_dir, state)
    check_logs(log_dir, state["step"])
    return state


def check_checkpoint_files(log_dir: Path, state: Mapping[str, object]) -> None:
    """The checkpoint folder the trainer state names must exist (it holds the weights and
    the optimizer); a missing adapter of that checkpoint is only a lost export (the docs
    invite deleting adapters), so it is a warning."""
    checkpoint = log_dir / str(state["checkpoint"])
    if not checkpoint.is_dir():
        raise RetrainError(f"cannot resume: {log_dir / STATE_FILE} names the checkpoint {checkpoint}, which does not "
                           "exist (deleted, or not copied with the run) — put it back, or start a fresh run in a new "
                           "--log-dir")
    adapter = state.get("adapter")
    if isinstance(adapter, str) and adapter and not (log_dir / adapter).is_dir():
        logger.warning("the adapter of checkpoint %s, %s, is missing: the run resumes from its saved state, but that "
                       "exported copy of the weights is lost", state["step"], log_dir / adapter)


def check_logs(log_dir: Path, step: int) -> None:
    """``metrics.jsonl`` must hold one row for each step 1..``step`` of the checkpoint.

    Two rows for one step, or rows out of order, mean the file mixes runs or was edited:
    appending to it would mix them further, so that is an error. Missing rows (a missing
    or truncated file, a gap) lose only logs; the run continues correctly, so that is a
    warning naming the steps. Rows after the checkpoint are dropped by the resume anyway,
    and so is a torn last line. ``generations.jsonl`` is checked for repeated rows."""
    path = log_dir / METRICS_FILE
    if not path.exists():
        logger.warning("%s is missing: the rows of steps 1-%d are lost; the resumed run logs the steps after %d into "
                       "a new file", path, step, step)
    else:
        covered = [number for number in (step_of(row, path) for row in read_rows(path, warn_torn=False))
                   if number <= step]
        _refuse_mixed(path, covered, [(number,) for number in covered])
        missing = sorted(set(range(1, step + 1)) - set(covered))
        if missing:
            logger.warning("%s has no rows for steps %s of the %d its checkpoint covers (truncated or edited): those "
                           "rows are lost; the run resumes after step %d and logs on from there", path,
                           _ranges(missing), step, step)
    generations = log_dir / GENERATIONS_FILE
    if generations.exists():
        rows = [row for row in read_rows(generations, warn_torn=False) if step_of(row, generations) <= step]
        _refuse_mixed(generations, [step_of(row, generations) for row in rows],
                      [(step_of(row, generations), row.get("index")) for row in rows])


def _refuse_mixed(path: Path, steps: list[int], keys: list[tuple[object, ...]]) -> None:
    """A log whose rows (``keys``: one per row) repeat, go back in ``steps`` or name no
    step of a run cannot be continued."""
    repeated = sorted({key[0] for key, count in Counter(keys).items() if count > 1 and isinstance(key[0], int)})
    if repeated:
        problem = f"more than one row for step {_ranges(repeated)}"
    elif any(number < 1 for number in steps):
        problem = f"rows for step {min(steps)}, which no run has (steps count from 1)"
    elif steps != sorted(steps):
        later = next(index for index in range(1, len(steps)) if steps[index] < steps[index - 1])
        problem = f"rows out of step order (step {steps[later]} after step {steps[later - 1]})"
    else:
        return
    raise RetrainError(f"cannot resume: {path} has {problem} — it holds the rows of more than one run, or was "
                       "edited; keep one row per step in step order (or move the file aside to go on without the old "
                       "rows), then resume again")


def _ranges(numbers: list[int]) -> str:
    """Sorted numbers as ranges: ``[2, 3, 4, 7]`` -> ``2-4, 7``."""
    parts: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if number is not None:
            start = previous = number
    return ", ".join(parts)


def restore(run: Run, state: Mapping[str, object]) -> None:
    """Put every piece of the checkpoint's state back, the engine serving the restored
    policy; a state file whose contents do not fit (edited by hand, or from another run)
    is a clean error, not a traceback."""
    try:
        _restore(run, state)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise RetrainError(f"cannot resume: {run.log_dir / STATE_FILE} is damaged ({type(exc).__name__}: {exc}) — "
                           "resume from a copy of the run, or start a fresh run") from exc


def _load_component_state(what: str, load: Callable[[Path], None], directory: Path) -> None:
    """``load(directory)``; a state that does not fit the component is named as such, not
    as a damaged trainer_state.json."""
    try:
        load(directory)
    except (KeyError, TypeError, ValueError, IndexError, OSError) as exc:
        raise RetrainError(f"cannot resume: the {what} could not load its state from {directory} "
                           f"({type(exc).__name__}: {exc}) — a checkpoint of another model, other settings or a "
                           "damaged copy; resume from an earlier checkpoint, or start a fresh run") from exc


def _restore(run: Run, state: Mapping[str, object]) -> None:
    checkpoint = run.log_dir / str(state["checkpoint"])
    _load_component_state("backend", run.backend.load_state, checkpoint / BACKEND_STATE)
    if run.backend.policy_version != state["policy_version"]:
        raise ValueError(f"the backend restored policy version {run.backend.policy_version}, the trainer state "
                         f"records {state['policy_version']}")
    run.publisher.publish_now()
    _load_component_state("engine", run.engine.load_state, checkpoint / ENGINE_STATE)
    data = state["data"]
    credit = state["credit"]
    rng = state["rng"]
    if not isinstance(data, dict) or not isinstance(credit, dict) or not isinstance(rng, dict):
        raise TypeError("data, credit and rng must be tables")
    run.collector.load_state_dict(data)
    run.credit.load_state_dict(credit)
    observers = state.get("observers", {})
    if not isinstance(observers, dict):
        raise TypeError("observers must be a table")
    for observer in run.observers:
        saved = observers.get(observer.name)
        if isinstance(saved, dict):
            observer.load_state_dict(saved)
    restore_rng_state(rng)
    step = state["step"]
    if not isinstance(step, int):
        raise TypeError("step must be an integer")
    run.sinks.truncate_after(step)
