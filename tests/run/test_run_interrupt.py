"""Stopping a run: Ctrl-C (SIGINT) and a kill before the first checkpoint.

Ctrl-C lets the step in progress finish, saves a checkpoint of it and exits with code
130, so the log folder can be resumed from exactly where it stopped. A run killed before
its first checkpoint leaves no trainer_state.json; starting it again in the same folder
replaces the rows that attempt logged instead of appending after them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_runs import (
    assert_rows_match,
    describe,
    read_jsonl_strict,
    run_retrain,
    start_retrain,
    workdir_with_default_config,
)

LONG_RUN = ("--max-steps", "100000", "--save-every", "0")


def complete_rows(path: Path) -> int:
    """How many complete lines the log has now (the file may be growing)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_for_rows(process: subprocess.Popen[str], metrics: Path, rows: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while complete_rows(metrics) < rows:
        assert process.poll() is None, f"the run ended early: exit {process.returncode}\n{process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {rows} metrics rows after {timeout} s"
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_checkpoints_the_current_step_and_exits(tmp_path: Path, retrain_cache: Path, signum: int,
                                                              exit_code: int) -> None:
    workdir = workdir_with_default_config(tmp_path)
    log_dir = workdir / "interrupted"
    process = start_retrain(workdir, retrain_cache, *LONG_RUN, "--log-dir", log_dir.name)
    wait_for_rows(process, log_dir / "metrics.jsonl", 3)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code, stderr[-3000:]
    assert "retrain: interrupted" in stderr and "Traceback" not in stderr
    assert f"--resume {log_dir.name}" in stderr

    rows = read_jsonl_strict(log_dir / "metrics.jsonl")
    stopped = rows[-1]["step"]
    assert [row["step"] for row in rows] == list(range(1, stopped + 1))
    state = json.loads((log_dir / "trainer_state.json").read_text())
    assert state["step"] == stopped
    assert (log_dir / state["checkpoint"] / "backend" / "local_backend_state.pt").is_file()
    assert (log_dir / "adapter" / f"checkpoint_step_{stopped}" / "model.safetensors").is_file()
    assert not (log_dir / "adapter" / "final").exists()


@pytest.mark.slow
def test_a_run_stopped_by_ctrl_c_resumes_to_the_same_result(tmp_path: Path, retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    interrupted, straight = workdir / "interrupted", workdir / "straight"
    process = start_retrain(workdir, retrain_cache, "--max-steps", "200", "--save-every", "0",
                            "--log-dir", interrupted.name)
    wait_for_rows(process, interrupted / "metrics.jsonl", 4)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-3000:]
    stopped = json.loads((interrupted / "trainer_state.json").read_text())["step"]
    total = stopped + 3
    resumed = run_retrain(workdir, retrain_cache, "--resume", interrupted.name, "--max-steps", str(total))
    assert resumed.returncode == 0, describe(resumed)
    reference = run_retrain(workdir, retrain_cache, "--max-steps", str(total), "--save-every", "0",
                            "--log-dir", straight.name)
    assert reference.returncode == 0, describe(reference)
    assert_rows_match(read_jsonl_strict(straight / "metrics.jsonl"), read_jsonl_strict(interrupted / "metrics.jsonl"))


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(tmp_path: Path, retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    log_dir = workdir / "twice"
    process = start_retrain(workdir, retrain_cache, *LONG_RUN, "--log-dir", log_dir.name)
    wait_for_rows(process, log_dir / "metrics.jsonl", 2)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-3000:]
    rows = read_jsonl_strict(log_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, len(rows) + 1))


@pytest.mark.slow
def test_a_fresh_start_after_a_kill_before_the_first_checkpoint_logs_each_step_once(
        tmp_path: Path, retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    log_dir = workdir / "restarted"
    process = start_retrain(workdir, retrain_cache, *LONG_RUN, "--log-dir", log_dir.name)
    wait_for_rows(process, log_dir / "metrics.jsonl", 5)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (log_dir / "trainer_state.json").exists()
    assert complete_rows(log_dir / "metrics.jsonl") >= 5

    # Nothing to resume from, so the same command starts over in the same folder.
    again = run_retrain(workdir, retrain_cache, "--max-steps", "3", "--log-dir", log_dir.name)
    assert again.returncode == 0, describe(again)
    reference = run_retrain(workdir, retrain_cache, "--max-steps", "3", "--log-dir", "reference")
    assert reference.returncode == 0, describe(reference)
    assert_rows_match(read_jsonl_strict(workdir / "reference" / "metrics.jsonl"),
                      read_jsonl_strict(log_dir / "metrics.jsonl"))
    assert read_jsonl_strict(log_dir / "generations.jsonl") == read_jsonl_strict(workdir / "reference" / "generations.jsonl")
