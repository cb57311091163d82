"""Run retrain's command line and SIGKILL it at one phase of one checkpoint.

``python kill_at_phase.py PHASE STEP -- ARGS...`` runs ``retrain ARGS`` in this process
with the piece of the checkpoint of step STEP that PHASE names wrapped so that, once it
has done its work, the process kills itself with SIGKILL — nothing after that point runs,
no ``finally``, no flush. The phases, in the order a checkpoint writes them:

- ``backend_state``: the backend's weights, optimizer and RNG in the staging folder;
- ``engine_state``: the engine's sampler RNG, staging folder complete (not yet renamed);
- ``adapter``: ``checkpoint_step_N`` written, after ``checkpoints/step_N`` was renamed;
- ``sync``: every logged row on disk;
- ``state``: ``trainer_state.json`` replaced (the checkpoint is committed), old ones not
  yet removed.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def killing_after(function: Callable[..., Any], when: Callable[..., bool]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        if when(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped


def arm(phase: str, step: int) -> None:
    import retrain.checkpoint as checkpoint
    from retrain.backends.local import LocalBackend
    from retrain.engines.pytorch import PyTorchEngine
    from retrain.sinks import Sinks

    staging = f".step_{step}.partial"
    in_staging = lambda self, directory: Path(directory).parent.name == staging  # noqa: E731
    if phase == "backend_state":
        LocalBackend.save_state = killing_after(LocalBackend.save_state, in_staging)  # type: ignore[method-assign]
    elif phase == "engine_state":
        PyTorchEngine.save_state = killing_after(PyTorchEngine.save_state, in_staging)  # type: ignore[method-assign]
    elif phase == "adapter":
        LocalBackend.save_adapter = killing_after(  # type: ignore[method-assign]
            LocalBackend.save_adapter, lambda self, path: Path(path).name == f"checkpoint_step_{step}")
    elif phase == "sync":
        # The sync of the checkpoint of `step`: the one after its adapter was written.
        Sinks.sync = killing_after(Sinks.sync, lambda self: any(  # type: ignore[method-assign]
            path.name == f"step_{step}" for path in Path.cwd().rglob("checkpoints/step_*")))
    elif phase == "state":
        checkpoint.write_atomic = killing_after(  # type: ignore[attr-defined]
            checkpoint.write_atomic, lambda path, data, *rest: f'"step": {step},' in str(data))
    else:
        raise SystemExit(f"unknown phase {phase!r}")


def main(argv: list[str]) -> int:
    phase, step, separator, *args = argv
    assert separator == "--", "usage: kill_at_phase.py PHASE STEP -- ARGS..."
    arm(phase, int(step))
    from retrain.cli import main as retrain_main

    return retrain_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
