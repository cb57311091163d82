"""SIGKILL at each phase of a checkpoint, then resume: the run ends exactly where an
uninterrupted one does (the same rows, the same final weights), whichever piece of the
checkpoint the kill interrupted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runs import (
    assert_rows_match,
    cli_environment,
    describe,
    load_weights,
    read_jsonl_strict,
    run_retrain,
    workdir_with_default_config,
)

HERE = Path(__file__).resolve().parent
RUN = ("--max-steps", "6", "--save-every", "2")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, retrain_cache: Path) -> Path:
    workdir = workdir_with_default_config(tmp_path_factory.mktemp("uninterrupted"))
    done = run_retrain(workdir, retrain_cache, *RUN, "--log-dir", "run")
    assert done.returncode == 0, describe(done)
    return workdir / "run"


# One phase in the default run, the others with -m slow (each is a run, a kill and a resume).
@pytest.mark.parametrize("phase", ["backend_state", *(pytest.param(phase, marks=pytest.mark.slow)
                                                      for phase in ("engine_state", "adapter", "sync", "state"))])
def test_a_kill_at_any_phase_of_a_checkpoint_resumes_to_the_same_result(tmp_path: Path, retrain_cache: Path,
                                                                        reference: Path, phase: str) -> None:
    workdir = workdir_with_default_config(tmp_path)
    killed = subprocess.run([sys.executable, str(HERE / "kill_at_phase.py"), phase, "4", "--", *RUN, "--log-dir",
                             "run"], cwd=workdir, env=cli_environment(retrain_cache), capture_output=True, text=True,
                            timeout=300, check=False)
    assert killed.returncode == -9, describe(killed)  # it died by SIGKILL where it was told to
    log_dir = workdir / "run"
    state = json.loads((log_dir / "trainer_state.json").read_text())
    # Until trainer_state.json is replaced the checkpoint of step 2 is the one in force.
    assert state["step"] == (4 if phase == "state" else 2)
    assert (log_dir / state["checkpoint"]).is_dir()

    resumed = run_retrain(workdir, retrain_cache, "--resume", "run")
    assert resumed.returncode == 0, describe(resumed)
    assert_rows_match(read_jsonl_strict(reference / "metrics.jsonl"), read_jsonl_strict(log_dir / "metrics.jsonl"))
    want, got = load_weights(reference / "adapter" / "final"), load_weights(log_dir / "adapter" / "final")
    assert want.keys() == got.keys()
    assert all(bool((want[name] == got[name]).all()) for name in want)  # type: ignore[union-attr]
    leftovers = sorted(path.name for path in (log_dir / "checkpoints").iterdir())
    assert leftovers == ["step_6"], leftovers
