"""Real runs for the status and plot tests: two finished 3-step runs of the tiny model
through the real command line (seeds 0 and 1, started together so they share the two
cores), and a campaign folder laid out as the campaign runner lays one out, its run
folders copied from those two runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_runs import start_retrain, workdir_with_default_config

# Small and quick: 2 prompts x 2 completions of at most 4 tokens, 3 steps.
RUN_FLAGS = ("--max-steps", "3", "--batch-size", "2", "--group-size", "2", "--max-tokens", "4")

CopyRun = Callable[..., Path]


@dataclass(frozen=True)
class RealRuns:
    workdir: Path
    seed0: Path  # log_dir of the run with seed 0
    seed1: Path


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory: pytest.TempPathFactory, retrain_cache: Path) -> RealRuns:
    workdir = workdir_with_default_config(tmp_path_factory.mktemp("status-runs"))
    started = [start_retrain(workdir, retrain_cache, *RUN_FLAGS, "--seed", str(seed), "--log-dir", f"logs/seed{seed}")
               for seed in (0, 1)]
    for process in started:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"exit {process.returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return RealRuns(workdir, workdir / "logs" / "seed0", workdir / "logs" / "seed1")


def copy_run(source: Path, target: Path, keep_steps: int | None = None) -> Path:
    """A copy of a run's logs (not its checkpoints or weights). With ``keep_steps``, the
    run as if killed after that step, before it checkpointed: later rows and the trainer
    state are gone."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", "adapter"))
    if keep_steps is not None:
        metrics = target / "metrics.jsonl"
        metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:keep_steps]))
        (target / "trainer_state.json").unlink()
    return target


@pytest.fixture(scope="session")
def copy_real_run() -> CopyRun:
    return copy_run


def exited_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    result = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                            check=True)
    return int(result.stdout)


def manifest_entry(name: str, condition: str, seed: int, status: str, **fields: object) -> dict[str, object]:
    entry: dict[str, object] = {"name": name, "condition": condition, "seed": seed, "log_dir": f"runs/{name}",
                                "max_steps": 3, "status": status, "pid": None, "returncode": None, "started": None,
                                "finished": None}
    entry.update(fields)
    return entry


def write_manifest(folder: Path, name: str, runs: list[dict[str, object]]) -> None:
    manifest = {"format": 1, "campaign": name, "source": "campaigns/sweep.toml", "created": "2025-01-01T00:00:00Z",
                "updated": "2025-01-01T00:10:00Z", "runs": runs, "squeeze": None}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


@pytest.fixture(scope="session")
def campaign_dir(tmp_path_factory: pytest.TempPathFactory, real_runs: RealRuns) -> Path:
    """``sweep``: condition maxrl+gtpo_sepa with two finished seeds; condition grpo+none
    (copies of the same runs, cut short) with one run killed after step 2 whose manifest
    still says running with the pid of a process that is gone, one that failed after
    step 1, and one not started yet."""
    folder = tmp_path_factory.mktemp("campaigns") / "sweep"
    runs = folder / "runs"
    copy_run(real_runs.seed0, runs / "maxrl+gtpo_sepa_s0")
    copy_run(real_runs.seed1, runs / "maxrl+gtpo_sepa_s1")
    copy_run(real_runs.seed0, runs / "grpo+none_s0", keep_steps=2)
    copy_run(real_runs.seed1, runs / "grpo+none_s1", keep_steps=1)
    write_manifest(folder, "sweep", [
        manifest_entry("maxrl+gtpo_sepa_s0", "maxrl+gtpo_sepa", 0, "done", returncode=0),
        manifest_entry("maxrl+gtpo_sepa_s1", "maxrl+gtpo_sepa", 1, "done", returncode=0),
        manifest_entry("grpo+none_s0", "grpo+none", 0, "running", pid=exited_pid()),
        manifest_entry("grpo+none_s1", "grpo+none", 1, "failed", returncode=1),
        manifest_entry("grpo+none_s2", "grpo+none", 2, "pending"),
    ])
    return folder
