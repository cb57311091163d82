"""The long end-to-end checks, run through their scripts in tests/bench:

- crash trials: a run killed with SIGKILL at random moments resumes every time, with no
  torn or duplicated metrics rows, no corrupt checkpoint, and the result of a run that
  was never interrupted;
- learning: the default retrain.toml (fixed seed) goes from a 20-step mean reward <= 0.2
  to >= 0.95 within its max_steps, in at most 1.5 GB. The benchmark's own target is the
  whole run in 90 s on 2 cores; this test allows 5 minutes to reach 0.95, model build
  included, so that a slower or busy machine does not fail it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runs import REPO_ROOT, cli_environment

BENCH = REPO_ROOT / "tests" / "bench"


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_result(tmp_path: Path, retrain_cache: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "crash_resume_trials.py"), "--trials", "10", "--seed", "1",
         "--cache", str(retrain_cache), "--workdir", str(tmp_path / "trials")],
        env=cli_environment(retrain_cache), capture_output=True, text=True, timeout=1800, check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert "10/10 trials passed (" in result.stdout


@pytest.mark.slow
def test_the_default_config_reaches_095_within_five_minutes(tmp_path: Path) -> None:
    # The model build is part of the time: the script gives the run a fresh cache.
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "bench_default_run.py"), "--seeds", "0", "--stop-at-target",
         "--max-seconds", "360", "--json", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    (seed,) = json.loads(out.read_text())
    assert seed["start_reward"] <= 0.2, result.stdout
    assert seed["target_step"] is not None and seed["target_step"] <= 2000, result.stdout
    assert seed["target_s"] is not None and seed["target_s"] <= 300, result.stdout
    assert seed["peak_rss_mb"] <= 1536, result.stdout
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
