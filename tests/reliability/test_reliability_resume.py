"""Resume integrity: a resumed run checks its logs and checkpoint against the trainer
state, and a fresh run never mixes its checkpoints with those of an earlier run.

Repeated or disordered rows in ``metrics.jsonl`` (two runs in one log) and a missing
checkpoint folder stop the resume; missing rows (a gap, a truncated or deleted log) and a
deleted adapter only lose logs or an exported copy, so they are warnings naming the file
and the steps, and the run continues.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from retrain.checkpoint import check_logs
from retrain.errors import RetrainError

from cli_runs import (
    describe,
    read_jsonl_strict,
    run_retrain,
    workdir_with_default_config,
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, retrain_cache: Path) -> Path:
    """A workdir whose ``base`` is a finished run of 4 steps, checkpointed at 2 and 4."""
    workdir = workdir_with_default_config(tmp_path_factory.mktemp("resume-integrity"))
    done = run_retrain(workdir, retrain_cache, "--max-steps", "4", "--save-every", "2", "--log-dir", "base")
    assert done.returncode == 0, describe(done)
    return workdir


def copy_of(workdir: Path, name: str) -> Path:
    shutil.copytree(workdir / "base", workdir / name)
    return workdir / name


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def keep_rows(log_dir: Path, steps: list[int]) -> None:
    """Rewrite metrics.jsonl with the rows of ``steps``, in that order (repeats allowed)."""
    rows = {row["step"]: row for row in read_jsonl_strict(log_dir / "metrics.jsonl")}
    (log_dir / "metrics.jsonl").write_text("".join(json.dumps(rows[step]) + "\n" for step in steps))


def refused(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


# ---------------------------------------------------------------- the checks alone


def write_rows(path: Path, steps: list[int], tail: bytes = b"") -> None:
    path.write_bytes(b"".join(json.dumps({"step": step, "index": 0}).encode() + b"\n" for step in steps) + tail)


@pytest.mark.parametrize(("steps", "tail", "warning"), [
    ([1, 2, 3, 4], b"", ""),
    ([1, 2, 3, 4, 5, 6], b"", ""),  # rows after the checkpoint: the resume drops them
    ([1, 2, 3, 4], b'{"step":5,"rew', ""),  # a torn row after the checkpoint
    ([1, 3, 4], b"", "has no rows for steps 2 of the 4 its checkpoint covers"),
    ([1, 2], b"", "has no rows for steps 3-4 of the 4"),
    ([2, 4, 7], b"", "has no rows for steps 1, 3 of the 4"),
    ([1, 2, 3], b'{"step":4,"rew', "has no rows for steps 4 of the 4"),
])
def test_missing_rows_are_a_warning_naming_the_steps(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     steps: list[int], tail: bytes, warning: str) -> None:
    write_rows(tmp_path / "metrics.jsonl", steps, tail)
    with caplog.at_level(logging.WARNING):
        check_logs(tmp_path, 4)
    if warning:
        assert f"{tmp_path / 'metrics.jsonl'} {warning}" in caplog.text
    else:
        assert caplog.text == ""


def test_a_missing_metrics_log_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_logs(tmp_path, 3)
    assert f"{tmp_path / 'metrics.jsonl'} is missing: the rows of steps 1-3 are lost" in caplog.text


@pytest.mark.parametrize(("steps", "problem"), [
    ([1, 2, 2, 3, 4], "has more than one row for step 2"),
    ([1, 2, 3, 4, 1, 2, 3], "has more than one row for step 1-3"),
    ([1, 3, 2, 4], "has rows out of step order (step 2 after step 3)"),
    ([0, 1, 2, 3, 4], "has rows for step 0, which no run has"),
])
def test_rows_of_two_runs_in_one_log_stop_the_resume(tmp_path: Path, steps: list[int], problem: str) -> None:
    write_rows(tmp_path / "metrics.jsonl", steps)
    with pytest.raises(RetrainError, match="cannot resume: ") as raised:
        check_logs(tmp_path, 4)
    assert f"{tmp_path / 'metrics.jsonl'} {problem}" in str(raised.value)
    assert "keep one row per step" in str(raised.value)


def test_repeated_generations_stop_the_resume(tmp_path: Path) -> None:
    write_rows(tmp_path / "metrics.jsonl", [1, 2])
    write_rows(tmp_path / "generations.jsonl", [1, 2, 2])  # the same (step, index) twice
    with pytest.raises(RetrainError, match=r"generations.jsonl has more than one row for step 2"):
        check_logs(tmp_path, 2)


# ------------------------------------------------------------- through the CLI


def test_a_log_with_a_repeated_step_stops_the_resume_and_changes_nothing(finished: Path,
                                                                        retrain_cache: Path) -> None:
    run = copy_of(finished, "repeated")
    keep_rows(run, [1, 2, 2, 3, 4])
    before = fingerprint(run)
    refused(run_retrain(finished, retrain_cache, "--resume", "repeated", "--max-steps", "6"),
            "cannot resume: repeated/metrics.jsonl has more than one row for step 2")
    assert fingerprint(run) == before


@pytest.mark.parametrize(("damage", "warning"), [
    ("gap", "gap/metrics.jsonl has no rows for steps 2-3 of the 4 its checkpoint covers"),
    ("deleted", "gone/metrics.jsonl is missing: the rows of steps 1-4 are lost"),
])
def test_lost_rows_are_a_visible_warning_and_the_run_goes_on(finished: Path, retrain_cache: Path, damage: str,
                                                           warning: str) -> None:
    name = "gap" if damage == "gap" else "gone"
    run = copy_of(finished, name)
    if damage == "gap":
        keep_rows(run, [1, 4])
    else:
        (run / "metrics.jsonl").unlink()
    result = run_retrain(finished, retrain_cache, "--resume", name, "--max-steps", "5")
    assert result.returncode == 0, describe(result)
    assert f"WARNING retrain.checkpoint: {warning}" in result.stderr
    expected = [1, 4, 5] if damage == "gap" else [5]
    assert [row["step"] for row in read_jsonl_strict(run / "metrics.jsonl")] == expected


def test_a_missing_checkpoint_folder_stops_the_resume(finished: Path, retrain_cache: Path) -> None:
    run = copy_of(finished, "no_checkpoint")
    shutil.rmtree(run / "checkpoints" / "step_4")
    refused(run_retrain(finished, retrain_cache, "--resume", "no_checkpoint", "--max-steps", "6"),
            "cannot resume: no_checkpoint/trainer_state.json names the checkpoint no_checkpoint/checkpoints/step_4, "
            "which does not exist")


def test_a_deleted_adapter_of_the_checkpoint_is_a_warning(finished: Path, retrain_cache: Path) -> None:
    run = copy_of(finished, "no_adapter")
    shutil.rmtree(run / "adapter" / "checkpoint_step_4")
    result = run_retrain(finished, retrain_cache, "--resume", "no_adapter", "--max-steps", "4")
    assert result.returncode == 0, describe(result)
    assert "the adapter of checkpoint 4, no_adapter/adapter/checkpoint_step_4, is missing" in result.stderr


def test_a_fresh_run_into_a_folder_whose_trainer_state_is_gone_is_refused(finished: Path,
                                                                         retrain_cache: Path) -> None:
    run = copy_of(finished, "stateless")
    (run / "trainer_state.json").unlink()
    before = fingerprint(run)
    refused(run_retrain(finished, retrain_cache, "--max-steps", "4", "--log-dir", "stateless"),
            "stateless has no trainer_state.json (nothing to resume), but holds the checkpoints of an earlier run: "
            "stateless/checkpoints/step_4, stateless/adapter/checkpoint_step_2",
            "nothing was changed — start it in a new --log-dir")
    assert fingerprint(run) == before


def test_a_fresh_run_into_an_adapter_folder_of_a_vanished_run_is_refused(finished: Path, retrain_cache: Path) -> None:
    shared = finished / "shared_adapter"
    shutil.copytree(finished / "base" / "adapter", shared)
    (shared / ".retrain-run").write_text(f"{finished / 'deleted_run'}\n")  # its run folder is gone
    before = fingerprint(shared)
    refused(run_retrain(finished, retrain_cache, "--max-steps", "1", "--log-dir", "newcomer",
                        "--backend-adapter-path", str(shared)),
            "holds the checkpoints of an earlier run", f"{shared}/checkpoint_step_2", f"{shared}/final")
    assert fingerprint(shared) == before
    assert not (finished / "newcomer" / "metrics.jsonl").exists()


def test_the_unfinished_first_checkpoint_of_an_earlier_attempt_is_replaced(finished: Path,
                                                                          retrain_cache: Path) -> None:
    # What a kill between the adapter and trainer_state.json of a first checkpoint (at
    # step 4) leaves: rows 1-4, checkpoints/step_4, adapter/checkpoint_step_4, no state.
    run = copy_of(finished, "unfinished")
    (run / "trainer_state.json").unlink()
    shutil.rmtree(run / "adapter" / "final")
    shutil.rmtree(run / "adapter" / "checkpoint_step_2")
    result = run_retrain(finished, retrain_cache, "--max-steps", "2", "--save-every", "2", "--log-dir", "unfinished")
    assert result.returncode == 0, describe(result)
    assert "removing unfinished/checkpoints/step_4, unfinished/adapter/checkpoint_step_4" in result.stderr
    assert [row["step"] for row in read_jsonl_strict(run / "metrics.jsonl")] == [1, 2]
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["step_2"]
    assert sorted(path.name for path in (run / "adapter").iterdir()) == [".retrain-run", "checkpoint_step_2", "final"]


def test_explain_reports_what_a_fresh_run_would_refuse(finished: Path, retrain_cache: Path) -> None:
    held = run_retrain(finished, retrain_cache, "explain", "--log-dir", "base")
    refused(held, "base already holds a run (it has trainer_state.json)", "continue it with `--resume base`")
    run = copy_of(finished, "stateless_explained")
    (run / "trainer_state.json").unlink()
    before = fingerprint(run)
    refused(run_retrain(finished, retrain_cache, "explain", "--log-dir", "stateless_explained"),
            "holds the checkpoints of an earlier run")
    assert fingerprint(run) == before
    resumable = run_retrain(finished, retrain_cache, "explain", "--resume", "base")
    assert resumable.returncode == 0, describe(resumable)
