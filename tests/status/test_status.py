"""``retrain status``: real runs of the tiny model, a campaign folder as the campaign runner
lays one out, a run whose lock another process holds, and a hundred run folders.

The end-to-end checks go through ``python -m retrain status``; the others call the
command's ``main`` in this process, which is the same code without the start-up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from retrain.commands import status
from retrain.run_index import STATES, TAIL_BYTES, index, read_last_row

if TYPE_CHECKING:
    from conftest import CopyRun, RealRuns

HOLD_LOCK = ("import fcntl, sys, time\n"
             "lock = open(sys.argv[1], 'a')\n"
             "fcntl.flock(lock, fcntl.LOCK_EX)\n"
             "print('locked', flush=True)\n"
             "time.sleep(120)\n")


def retrain_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retrain", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, check=False)


def status_json(capsys: pytest.CaptureFixture[str], folder: Path) -> dict:
    assert status.main([str(folder), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def status_text(capsys: pytest.CaptureFixture[str], folder: Path) -> str:
    assert status.main([str(folder)]) == 0
    return capsys.readouterr().out


def last_row(log_dir: Path) -> dict:
    return json.loads((log_dir / "metrics.jsonl").read_text().splitlines()[-1])


def set_max_steps(log_dir: Path, steps: int) -> None:
    """Rewrites the config snapshot's ``[training] max_steps`` (3 in the real runs)."""
    config = log_dir / "config.toml"
    text = config.read_text()
    assert text.count("\nmax_steps = 3\n") == 1
    config.write_text(text.replace("\nmax_steps = 3\n", f"\nmax_steps = {steps}\n"))


def test_finished_runs_are_done_with_their_last_metrics(real_runs: RealRuns) -> None:
    result = retrain_cli("status", str(real_runs.workdir), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["format"] == 1 and document["campaigns"] == [] and document["unreadable"] == []
    assert document["root"] == str(real_runs.workdir)
    # The runs' checkpoints and adapter folders are not runs.
    assert [run["path"] for run in document["runs"]] == ["logs/seed0", "logs/seed1"]
    for run, log_dir in zip(document["runs"], (real_runs.seed0, real_runs.seed1)):
        row = last_row(log_dir)
        assert run["state"] == "done" and run["problems"] == []
        assert (run["step"], run["max_steps"], run["checkpoint_step"], run["progress"]) == (3, 3, 3, 1.0)
        assert run["metrics"] == {name: row[name] for name in ("reward_mean", "correct_rate", "loss", "step_time_s")}
        assert run["seed"] == int(log_dir.name.removeprefix("seed"))
        assert run["condition"] is None and run["pid"] is None and run["host"] is None
        assert run["manifest_status"] is None
        assert 0 <= run["age_s"] < 600 and run["updated"].endswith("Z")


def test_the_table_has_a_line_per_run(real_runs: RealRuns, capsys: pytest.CaptureFixture[str]) -> None:
    lines = status_text(capsys, real_runs.workdir).splitlines()
    assert lines[0].split() == ["RUN", "STATE", "STEP", "REWARD", "CORRECT", "LOSS", "STEP_S", "UPDATED"]
    row = last_row(real_runs.seed0)
    cells = lines[1].split()
    assert cells[:5] == [str(real_runs.seed0), "done", "3/3", f"{row['reward_mean']:.3f}", f"{row['correct_rate']:.3f}"]
    assert cells[-1] == "ago" and len(lines) == 3


def test_a_run_is_running_while_its_lock_is_held_and_stale_after(real_runs: RealRuns, copy_real_run: CopyRun,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    log_dir = copy_real_run(real_runs.seed0, tmp_path / "long")
    set_max_steps(log_dir, 10)  # a run of 10 steps, 3 done: not finished
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(log_dir / ".retrain.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        [run] = status_json(capsys, tmp_path)["runs"]
        assert (run["state"], run["step"], run["max_steps"], run["progress"]) == ("running", 3, 10, 0.3)
        assert "running  3/10" in status_text(capsys, tmp_path)
    finally:
        holder.kill()
        holder.wait()
    [run] = status_json(capsys, tmp_path)["runs"]
    assert run["state"] == "stale"


def test_a_run_folder_without_metrics_is_found_by_its_config_and_lock(real_runs: RealRuns, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    log_dir = tmp_path / "starting"
    log_dir.mkdir()
    (log_dir / "config.toml").write_bytes((real_runs.seed0 / "config.toml").read_bytes())
    (log_dir / ".retrain.lock").touch()
    [run] = status_json(capsys, tmp_path)["runs"]
    assert (run["state"], run["step"], run["max_steps"], run["progress"]) == ("stale", None, 3, None)
    assert run["metrics"] == {"reward_mean": None, "correct_rate": None, "loss": None, "step_time_s": None}
    assert "stale  -/3" in status_text(capsys, tmp_path)


def test_a_campaign_counts_its_runs_per_state(campaign_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = status_json(capsys, campaign_dir.parent)
    # Its run folders belong to the campaign, not to the list of runs outside one.
    assert document["runs"] == []
    [campaign] = document["campaigns"]
    assert (campaign["path"], campaign["name"], campaign["source"]) == ("sweep", "sweep", "campaigns/sweep.toml")
    assert campaign["counts"] == {"pending": 1, "running": 0, "done": 2, "failed": 1, "stale": 1}
    # 3 + 3 + 2 + 1 + 0 steps of 5 x 3.
    assert (campaign["steps"], campaign["max_steps"], campaign["progress"]) == (9, 15, 0.6)
    assert campaign["finished"] is False and campaign["problems"] == []
    states = {run["name"]: (run["state"], run["manifest_status"], run["step"]) for run in campaign["runs"]}
    assert states == {
        "maxrl+gtpo_sepa_s0": ("done", "done", 3),
        "maxrl+gtpo_sepa_s1": ("done", "done", 3),
        "grpo+none_s0": ("stale", "running", 2),  # the manifest's pid is gone and nothing holds the lock
        "grpo+none_s1": ("failed", "failed", 1),
        "grpo+none_s2": ("pending", "pending", None),
    }
    assert campaign["runs"][0]["path"] == "sweep/runs/maxrl+gtpo_sepa_s0"
    assert [run["condition"] for run in campaign["runs"]] == ["maxrl+gtpo_sepa"] * 2 + ["grpo+none"] * 3


def test_the_table_shows_a_campaign_line_then_its_runs(campaign_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = status_text(capsys, campaign_dir.parent).splitlines()
    assert lines[1] == (f"campaign sweep ({campaign_dir}): 5 runs: 1 pending, 2 done, 1 failed, 1 stale; "
                        "steps 9/15 (60%)")
    assert [line.split()[:3] for line in lines[2:]] == [
        ["maxrl+gtpo_sepa_s0", "done", "3/3"], ["maxrl+gtpo_sepa_s1", "done", "3/3"],
        ["grpo+none_s0", "stale", "2/3"], ["grpo+none_s1", "failed", "1/3"], ["grpo+none_s2", "pending", "-/3"]]
    assert all(line.startswith("  ") for line in lines[2:])


def test_a_manifest_saying_running_with_a_live_pid_is_running(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # A run just started by the campaign runner: its process lives, its folder is empty yet.
    entry = {"name": "a_s0", "condition": "a", "seed": 0, "log_dir": "runs/a_s0", "max_steps": 5,
             "status": "running", "pid": os.getpid(), "returncode": None, "started": None, "finished": None}
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "campaign": "c", "runs": [entry]}))
    [run] = status_json(capsys, tmp_path)["campaigns"][0]["runs"]
    assert (run["state"], run["pid"], run["max_steps"], run["step"]) == ("running", os.getpid(), 5, None)
    # A pid recorded on another machine means nothing here: only a held lock would say running.
    entry["host"] = f"not-{socket.gethostname()}"
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "campaign": "c", "runs": [entry]}))
    [run] = status_json(capsys, tmp_path)["campaigns"][0]["runs"]
    assert (run["state"], run["host"]) == ("stale", f"not-{socket.gethostname()}")


def test_a_damaged_manifest_is_reported_and_its_runs_listed_alone(real_runs: RealRuns, copy_real_run: CopyRun,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    copy_real_run(real_runs.seed0, tmp_path / "runs" / "x")
    (tmp_path / "manifest.json").write_text('{"format": 1, "runs": [')
    document = status_json(capsys, tmp_path)
    [campaign] = document["campaigns"]
    assert campaign["runs"] == [] and campaign["problems"][0].startswith("manifest.json cannot be read")
    assert [run["path"] for run in document["runs"]] == ["runs/x"]


def test_damaged_files_are_problems_of_their_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_dir = tmp_path / "broken"
    log_dir.mkdir()
    (log_dir / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    (log_dir / "config.toml").write_text("[training\n")
    (log_dir / "trainer_state.json").write_text("{")
    [run] = status_json(capsys, tmp_path)["runs"]
    assert run["state"] == "stale" and run["step"] is None and run["max_steps"] is None
    assert [problem.split(" ")[0] for problem in run["problems"]] == ["config.toml", "metrics.jsonl:",
                                                                      "trainer_state.json"]
    assert "    ! metrics.jsonl: last row cannot be read" in status_text(capsys, tmp_path)


def test_a_hundred_run_folders(real_runs: RealRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = {}
    for number in range(100):
        log_dir = tmp_path / "sweep" / f"run{number:03d}"
        log_dir.mkdir(parents=True)
        for name in ("metrics.jsonl", "config.toml", "trainer_state.json", ".retrain.lock"):
            (log_dir / name).write_bytes((real_runs.seed0 / name).read_bytes())
        (log_dir / "checkpoints" / "step_3").mkdir(parents=True)
        (log_dir / "checkpoints" / "step_3" / "metrics.jsonl").write_text("")  # inside a run: never a run
        if number % 3 == 1:
            set_max_steps(log_dir, 10)
        expected[f"sweep/run{number:03d}"] = ("done", 3) if number % 3 != 1 else ("stale", 10)
    runs = status_json(capsys, tmp_path)["runs"]
    assert {run["path"]: (run["state"], run["max_steps"]) for run in runs} == expected
    assert [run["path"] for run in runs] == sorted(expected)
    assert len(status_text(capsys, tmp_path).splitlines()) == 101


def test_search_skips_checkpoints_adapters_hidden_folders_and_venvs(tmp_path: Path) -> None:
    row = '{"step": 1, "reward_mean": 0.5}\n'
    for folder in ("run", "run/checkpoints/step_1", "run/adapter/final", "run/sub/inner", "weights/final",
                   ".hidden/run", "venv/lib/run"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "metrics.jsonl").write_text(row)
    (tmp_path / "weights" / ".retrain-run").write_text("/somewhere/else\n")  # an adapter folder elsewhere
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "link").symlink_to(tmp_path)  # followed, it would loop
    found = index(tmp_path)
    assert [run.path.relative_to(tmp_path).as_posix() for run in found.runs] == ["run", "run/sub/inner"]


@pytest.mark.parametrize(("text", "max_steps"), [
    ("[model]\nmodel = 'm'\n\n[training]\nseed = 3\nmax_steps = 7\n\n[logging]\nlog_dir = 'x'\n", 7),
    ("[training]\nmax_steps = 7\n", 7),
    # A multi-line array whose line starts with "[": the table cannot be cut out on its own.
    ("[training]\nstops = [\n[1, 2],\n]\nmax_steps = 7\n", 7),
    ("[training.sub]\nmax_steps = 9\n[training]\nmax_steps = 7\n", 7),
    ("max_steps = 9\n", None),
])
def test_max_steps_comes_from_the_training_table(tmp_path: Path, text: str, max_steps: int | None) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "config.toml").write_text(text)
    [run] = index(tmp_path).runs
    assert (run.max_steps, run.problems) == (max_steps, [])


def test_the_last_row_is_read_from_the_end(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    assert read_last_row(log) is None
    log.write_text("")
    assert read_last_row(log) is None
    log.write_text('{"step": 1')  # one torn line: no row yet
    assert read_last_row(log) is None
    # Rows longer than the tail read first, so the reader has to read further back.
    long_rows = [json.dumps({"step": step, "text": "x" * (TAIL_BYTES + 100)}) for step in (1, 2)]
    log.write_text("\n".join(long_rows) + "\n" + '{"step": 3, "tor')
    assert read_last_row(log) == {"step": 2, "text": "x" * (TAIL_BYTES + 100)}
    log.write_text('{"step": 1}\n{"step": 2}\n')
    assert read_last_row(log) == {"step": 2}
    log.write_text('{"step": 1}\n[2]\n')
    with pytest.raises(ValueError, match="not an object"):
        read_last_row(log)


def test_file_names_are_those_a_run_writes() -> None:
    from retrain import run_dirs, run_index, sinks

    assert (run_index.METRICS_FILE, run_index.CONFIG_FILE, run_index.LOCK_FILE, run_index.STATE_FILE,
            run_index.OWNER_FILE) == (sinks.METRICS_FILE, run_dirs.CONFIG_FILE, run_dirs.LOCK_FILE,
                                      run_dirs.STATE_FILE, run_dirs.OWNER_FILE)
    assert STATES == ("pending", "running", "done", "failed", "stale")


def test_status_imports_no_numpy(real_runs: RealRuns) -> None:
    # What keeps a status of many runs quick: numpy alone takes longer to import than
    # reading a hundred runs (tests/bench/bench_status.py).
    probe = ("import sys\nimport retrain.cli\nretrain.cli.main(['status', sys.argv[1], '--json'])\n"
             "print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe, str(real_runs.workdir)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stderr.split())
    assert "retrain.commands.status" in loaded
    assert loaded.isdisjoint({"numpy", "torch", "retrain.config.schema", "retrain.run_dirs"})


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = retrain_cli("status", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr == (f"retrain: {tmp_path / 'nowhere'} does not exist — give a folder that holds runs (a "
                             "log_dir, a campaign folder, or a folder above them)\n")
    assert retrain_cli("status", "--watch", "-1", str(tmp_path)).stderr.startswith(
        "retrain: status: argument --watch: --watch takes a positive number of seconds")


def test_an_empty_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status_text(capsys, tmp_path) == f"no runs or campaigns under {tmp_path}\n"


def test_watch_redraws_until_ctrl_c_then_exits_0(real_runs: RealRuns) -> None:
    watcher = subprocess.Popen([sys.executable, "-m", "retrain", "status", "--watch", "0.1"], cwd=real_runs.workdir,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert watcher.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while sum(line.startswith("every 0.1s, Ctrl-C to stop") for line in seen) < 2 and time.monotonic() < deadline:
        seen.append(watcher.stdout.readline())
        assert seen[-1], f"status --watch ended early: {watcher.stderr.read() if watcher.stderr else ''}"
    watcher.send_signal(signal.SIGINT)
    _, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 0 and stderr == ""
    # Not a terminal: each view follows the last, after a blank line.
    assert seen[1].split()[0] == "RUN" and seen[4] == "\n"
    assert [line.split()[:2] for line in seen[2:4]] == [["logs/seed0", "done"], ["logs/seed1", "done"]]
