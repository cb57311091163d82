"""Checkpoints: everything a run needs to continue where it stopped (DESIGN §7).

A checkpoint of step N is ``<log_dir>/checkpoints/step_N/`` holding ``backend/`` (the
backend's ``save_state``: weights, optimizer, its RNGs) and ``engine/`` (the engine's:
its sampler RNG), the adapter ``<adapter_path>/checkpoint_step_N``, and, written last and
atomically as the commit point, ``<log_dir>/trainer_state.json``: the step, the seed, the
prompt cursor, the credit pipeline's state (SEPA), Python's and numpy's RNG states, the
policy version and the wandb run id. A run killed at any moment resumes from the last
complete checkpoint; the pieces of a newer, unfinished one are ignored.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from retrain.atomic import write_atomic
from retrain.errors import RetrainError
from retrain.run_dirs import STATE_FILE
from retrain.step import Run

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
    """Write backend and engine state, the adapter and (last, atomically) the trainer state."""
    checkpoints = run.log_dir / "checkpoints"
    final_dir = checkpoints / f"step_{step}"
    staging = checkpoints / f".step_{step}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    run.backend.save_state(staging / BACKEND_STATE)
    run.engine.save_state(staging / ENGINE_STATE)
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(staging, final_dir)
    run.backend.save_adapter(run.adapter_dir / f"checkpoint_step_{step}")
    run.sinks.sync()  # no logged row may be newer than the state on disk
    state = {
        "version": STATE_VERSION,
        "step": step,
        "seed": run.seed,
        "checkpoint": str(final_dir.relative_to(run.log_dir)),
        "data": run.collector.state_dict(),
        "credit": run.credit.state_dict(),
        "rng": rng_state(),
        "policy_version": run.backend.policy_version,
        "wandb_run_id": run.sinks.wandb_run_id,
        **extra,
    }
    write_atomic(run.log_dir / STATE_FILE, json.dumps(state, indent=1))
    for old in checkpoints.glob("step_*"):
        if old != final_dir:
            shutil.rmtree(old, ignore_errors=True)
    return final_dir


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
    return state


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
    restore_rng_state(rng)
    step = state["step"]
    if not isinstance(step, int):
        raise TypeError("step must be an integer")
    run.sinks.truncate_after(step)
