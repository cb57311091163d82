"""Exact resume through the real command line, and the runs ``retrain`` refuses to start.

A run of 20 steps is compared with a run of 10 steps that is then extended with
``--resume DIR --max-steps 20``: the metrics rows (every field but timings and memory)
and the final weights must be identical.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import pytest
from cli_runs import (
    DEFAULT_CONFIG,
    assert_rows_match,
    describe,
    load_weights,
    read_jsonl_strict,
    run_retrain,
    workdir_with_default_config,
)

SAVE_EVERY = 5


class Runs:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.straight = workdir / "straight"
        self.first_ten = workdir / "first_ten"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, retrain_cache: Path) -> Runs:
    """``straight``: 20 steps in one go; ``first_ten``: the same run stopped after 10."""
    workdir = workdir_with_default_config(tmp_path_factory.mktemp("resume"))
    result = Runs(workdir)
    for log_dir, steps in ((result.straight, 20), (result.first_ten, 10)):
        done = run_retrain(workdir, retrain_cache, "--max-steps", str(steps), "--save-every", str(SAVE_EVERY),
                           "--log-dir", log_dir.name)
        assert done.returncode == 0, describe(done)
    return result


def tree_fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: content hash and modification time."""
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_ten_steps_then_resume_for_ten_more_equals_twenty_straight(runs: Runs, retrain_cache: Path) -> None:
    resumed = copy_run(runs.first_ten, runs.workdir / "resumed")
    result = run_retrain(runs.workdir, retrain_cache, "--resume", resumed.name, "--max-steps", "20")
    assert result.returncode == 0, describe(result)
    assert result.stdout.startswith("finished 20 steps")

    straight_rows = read_jsonl_strict(runs.straight / "metrics.jsonl")
    resumed_rows = read_jsonl_strict(resumed / "metrics.jsonl")
    assert [row["step"] for row in straight_rows] == list(range(1, 21))
    assert_rows_match(straight_rows, resumed_rows)
    assert read_jsonl_strict(resumed / "generations.jsonl") == read_jsonl_strict(runs.straight / "generations.jsonl")

    import torch

    want = load_weights(runs.straight / "adapter" / "final")
    got = load_weights(resumed / "adapter" / "final")
    assert sorted(got) == sorted(want)
    assert all(torch.equal(want[name], got[name]) for name in want)
    # The mid-run checkpoints of the resumed part are the straight run's too.
    for step in (15, 20):
        want = load_weights(runs.straight / "adapter" / f"checkpoint_step_{step}")
        got = load_weights(resumed / "adapter" / f"checkpoint_step_{step}")
        assert all(torch.equal(want[name], got[name]) for name in want), step

    straight_state = json.loads((runs.straight / "trainer_state.json").read_text())
    resumed_state = json.loads((resumed / "trainer_state.json").read_text())
    for key in ("step", "seed", "data", "credit", "rng", "skipped_updates"):
        assert resumed_state[key] == straight_state[key], key

    from retrain.config.loader import load_config

    # The snapshot now describes the extended run, so a plain `--resume` continues it.
    snapshot = load_config(resumed / "config.toml", environ={})
    assert snapshot.training.max_steps == 20 and snapshot.resume.from_ == ""


def test_a_fresh_run_into_the_log_dir_of_a_run_fails_and_changes_nothing(runs: Runs, retrain_cache: Path) -> None:
    before = tree_fingerprint(runs.first_ten)
    result = run_retrain(runs.workdir, retrain_cache, "--max-steps", "10", "--log-dir", runs.first_ten.name)
    assert result.returncode == 2, describe(result)
    assert "already holds a run" in result.stderr and "--resume" in result.stderr
    assert "Traceback" not in result.stderr
    assert tree_fingerprint(runs.first_ten) == before


def test_resume_of_a_folder_without_trainer_state_fails(runs: Runs, retrain_cache: Path) -> None:
    no_state = runs.workdir / "no_state"
    no_state.mkdir()
    (no_state / "metrics.jsonl").write_text('{"step":1}\n')
    result = run_retrain(runs.workdir, retrain_cache, "--resume", no_state.name)
    assert result.returncode == 2, describe(result)
    assert "cannot resume: no_state/config.toml does not exist" in result.stderr
    assert sorted(path.name for path in no_state.iterdir()) == ["metrics.jsonl"]
    # Given a config explicitly, the missing state is what is reported.
    result = run_retrain(runs.workdir, retrain_cache, "retrain.toml", "--resume", no_state.name)
    assert result.returncode == 2, describe(result)
    assert "trainer_state.json does not exist" in result.stderr
    assert sorted(path.name for path in no_state.iterdir()) == ["metrics.jsonl"]


def test_resume_with_a_changed_training_setting_fails_and_changes_nothing(runs: Runs, retrain_cache: Path) -> None:
    before = tree_fingerprint(runs.first_ten)
    result = run_retrain(runs.workdir, retrain_cache, "--resume", runs.first_ten.name, "--max-steps", "20",
                         "--lr", "0.001")
    assert result.returncode == 2, describe(result)
    shipped_lr = tomllib.loads(DEFAULT_CONFIG.read_text())["training"]["lr"]
    assert f"training.lr = 0.001 (the run has {shipped_lr!r})" in result.stderr
    assert tree_fingerprint(runs.first_ten) == before


def test_resume_with_fewer_steps_than_done_fails(runs: Runs, retrain_cache: Path) -> None:
    before = tree_fingerprint(runs.first_ten)
    result = run_retrain(runs.workdir, retrain_cache, "--resume", runs.first_ten.name, "--max-steps", "5")
    assert result.returncode == 2, describe(result)
    assert "already completed 10 steps" in result.stderr and "--max-steps 10" in result.stderr
    assert tree_fingerprint(runs.first_ten) == before


# Everything with state of its own at once: LoRA with dropout (torch's generator), the SEPA
# schedule in auto mode with HICRA over regex planning tokens, top-rho masking, dynamic
# sampling (refills draw extra prompts) and micro-batched updates.
STATEFUL_FLAGS = ["--lora-rank", "4", "--lora.dropout", "0.1", "--lr", "1e-2", "--advantage-mode", "maxrl",
                  "--transform-mode", "gtpo_sepa_hicra", "--sepa-schedule", "auto", "--sepa-delay-steps", "0",
                  "--sepa-steps", "4", "--sepa-warmup-steps", "1", "--sepa-correct-rate-gate", "0",
                  "--surprisal-mask-rho", "0.25", "--dynamic-sampling", "--backend-opt", "micro_batch_size=16",
                  "--save-every", "2"]


def test_resume_is_exact_with_every_stateful_feature_on(tmp_path: Path, retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    for log_dir, steps in (("straight", 6), ("part", 3)):
        done = run_retrain(workdir, retrain_cache, "--max-steps", str(steps), "--log-dir", log_dir, *STATEFUL_FLAGS)
        assert done.returncode == 0, describe(done)
    resumed = run_retrain(workdir, retrain_cache, "--resume", "part", "--max-steps", "6")
    assert resumed.returncode == 0, describe(resumed)
    straight_rows = read_jsonl_strict(workdir / "straight" / "metrics.jsonl")
    assert straight_rows[-1]["sepa_lambda"] > 0  # SEPA really ran
    assert_rows_match(straight_rows, read_jsonl_strict(workdir / "part" / "metrics.jsonl"))

    import torch

    want, got = (load_weights(workdir / name / "adapter" / "final") for name in ("straight", "part"))
    assert sorted(got) == sorted(want) and all(torch.equal(want[name], got[name]) for name in want)


@pytest.mark.parametrize("max_staleness", [0, 1])
def test_split_mode_resumes_exactly_on_policy_and_consistently_when_sampling_ahead(
        tmp_path: Path, retrain_cache: Path, max_staleness: int) -> None:
    workdir = workdir_with_default_config(tmp_path)
    flags = ["--devices", "cpu,cpu", "--max-staleness", str(max_staleness), "--save-every", "3"]
    straight = run_retrain(workdir, retrain_cache, *flags, "--max-steps", "6", "--log-dir", "straight")
    assert straight.returncode == 0, describe(straight)
    first = run_retrain(workdir, retrain_cache, *flags, "--max-steps", "3", "--log-dir", "resumed")
    assert first.returncode == 0, describe(first)
    resumed = run_retrain(workdir, retrain_cache, "--resume", "resumed", "--max-steps", "6")
    assert resumed.returncode == 0, describe(resumed)
    want = read_jsonl_strict(workdir / "straight" / "metrics.jsonl")
    got = read_jsonl_strict(workdir / "resumed" / "metrics.jsonl")
    assert [row["step"] for row in got] == list(range(1, 7))
    assert max(row["policy_staleness"] for row in got) <= max_staleness
    # The same prompts at the same steps either way: none trained twice, none skipped.
    prompts = [[(row["step"], row["prompt"]) for row in read_jsonl_strict(workdir / name / "generations.jsonl")]
               for name in ("straight", "resumed")]
    assert prompts[0] == prompts[1]
    if max_staleness == 0:
        assert_rows_match(want, got)
        assert "bit-identically" not in resumed.stderr
    else:
        assert "resumes consistently but not bit-identically" in resumed.stderr
