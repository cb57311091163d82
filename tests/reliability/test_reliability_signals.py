"""Signals against a run that waits on the network or writes a checkpoint: the run exits
within seconds of the second signal whatever the server does, with the documented exit
codes (128 + signal), no traceback, and a folder that resumes."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO
from pathlib import Path

import pytest
from hostile_server import HostileServer

from retrain.stopping import RunInterrupted, StopSignals

from cli_runs import (
    cli_environment,
    describe,
    read_jsonl_strict,
    retrain_command,
    run_retrain,
    workdir_with_default_config,
)

JUDGE_RUN = ("--reward-type", "judge", "--judge-model", "grader", "--max-steps", "3", "--save-every", "0",
             "--log-dir", "judged")


@pytest.fixture
def server() -> Iterator[HostileServer]:
    hostile = HostileServer().start()
    yield hostile
    hostile.stop()


def start_judged_run(tmp_path: Path, cache: Path, server: HostileServer, *args: str) -> subprocess.Popen[str]:
    workdir = workdir_with_default_config(tmp_path)
    env = {**cli_environment(cache), "OPENAI_BASE_URL": server.url}
    return subprocess.Popen(retrain_command(*JUDGE_RUN, *args), cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


class Stderr:
    """A process's stderr, read as it comes, so a test can wait for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        assert process.stderr is not None
        self.reader = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self.reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_for(self, phrase: str, timeout: float) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: any(phrase in line for line in self.lines), timeout), self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)[-3000:]


def wait_exit_time(process: subprocess.Popen[str], timeout: float) -> float:
    """Seconds until ``process`` exits (the test fails if it runs ``timeout`` longer)."""
    started = time.monotonic()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"still running {timeout} s later")
    return time.monotonic() - started


def wait_exit(process: subprocess.Popen[str], timeout: float) -> tuple[float, str]:
    stderr = Stderr(process)
    elapsed = wait_exit_time(process, timeout)
    stderr.reader.join(10)
    return elapsed, stderr.text


@pytest.mark.parametrize(("mode", "first", "second"), [
    ("hang", signal.SIGTERM, signal.SIGTERM),
    ("drip", signal.SIGINT, signal.SIGINT),
    ("hang", signal.SIGINT, signal.SIGTERM),
])
def test_the_second_signal_ends_a_run_stuck_on_the_network(tmp_path: Path, retrain_cache: Path,
                                                            server: HostileServer, mode: str, first: int,
                                                            second: int) -> None:
    server.mode, server.drip_s = mode, 0.2
    process = start_judged_run(tmp_path, retrain_cache, server, "--timeout-s", "3600")
    stderr = Stderr(process)
    assert server.got_request.wait(120), "the run never called the judge"
    process.send_signal(first)
    # Two identical signals sent at once are delivered as one: wait until the first is seen.
    stderr.wait_for("finishing this step and saving a checkpoint", 30)
    assert process.poll() is None  # the calls have a grace to answer; the run still waits on them
    process.send_signal(second)
    elapsed = wait_exit_time(process, 30)
    stderr.reader.join(10)
    output = stderr.text
    assert elapsed < 5.0, f"exited {elapsed:.1f} s after the second signal\n{output}"
    assert process.returncode == 128 + second, output
    assert "Traceback" not in output and "Exception ignored" not in output, output


def test_a_silent_judge_fails_the_run_at_its_deadline(tmp_path: Path, retrain_cache: Path,
                                                      server: HostileServer) -> None:
    server.mode = "hang"
    process = start_judged_run(tmp_path, retrain_cache, server, "--timeout-s", "2")
    assert server.got_request.wait(120), "the run never called the judge"
    elapsed, stderr = wait_exit(process, 60)
    assert process.returncode == 2, stderr[-3000:]
    assert "did not answer within its 2 s deadline" in stderr and "[reward] timeout_s" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr
    assert elapsed < 10.0, elapsed


def test_sighup_checkpoints_and_stops_like_sigterm(tmp_path: Path, retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    process = subprocess.Popen(retrain_command("--max-steps", "100000", "--save-every", "0", "--log-dir", "hup"),
                               cwd=workdir, env=cli_environment(retrain_cache), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    metrics = workdir / "hup" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_bytes().count(b"\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGHUP)
    _, stderr = wait_exit(process, 60)
    assert process.returncode == 129, stderr[-3000:]
    assert "SIGHUP: finishing this step and saving a checkpoint" in stderr and "Traceback" not in stderr
    rows = read_jsonl_strict(metrics)
    resumed = run_retrain(workdir, retrain_cache, "--resume", "hup", "--max-steps", str(int(rows[-1]["step"]) + 1))
    assert resumed.returncode == 0, describe(resumed)


def test_a_second_signal_while_a_checkpoint_is_written_lets_it_finish() -> None:
    written: list[str] = []
    with pytest.raises(RunInterrupted) as stopped, StopSignals(exit_deadline_s=60) as signals:
        with signals.graceful():
            os.kill(os.getpid(), signal.SIGTERM)  # the first: finish the step, checkpoint it
            assert signals.requested
            with signals.checkpointing():
                os.kill(os.getpid(), signal.SIGTERM)  # the second arrives mid-write
                written.append("backend state")
                written.append("trainer_state.json")
    assert written == ["backend state", "trainer_state.json"]
    assert stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_a_third_signal_exits_at_once(tmp_path: Path) -> None:
    script = (
        "import os, signal, time\n"
        "from retrain.stopping import StopSignals\n"
        "with StopSignals(exit_deadline_s=600) as signals, signals.graceful():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    with signals.checkpointing():\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(600)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 130, result.stderr
    assert "SIGINT again: exiting now" in result.stderr and "Traceback" not in result.stderr


def test_the_exit_deadline_never_cuts_a_checkpoint_short() -> None:
    script = (
        "import os, signal, sys, time\n"
        "from retrain.stopping import StopSignals, RunInterrupted\n"
        "try:\n"
        "    with StopSignals(exit_deadline_s=0.5) as signals, signals.graceful():\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        with signals.checkpointing():\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "            time.sleep(2.0)  # a checkpoint slower than the exit deadline\n"
        "            print('committed', flush=True)\n"
        "except RunInterrupted as stopped:\n"
        "    sys.exit(stopped.exit_code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 130, result.stderr
    assert result.stdout == "committed\n" and "exiting now" not in result.stderr, result.stderr


def test_a_terminal_that_went_away_ends_the_progress_line_not_the_run() -> None:
    from retrain.sinks.console import ConsoleProgress

    class ClosedTerminal(io.StringIO):
        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> int:
            raise OSError(errno.EIO, "Input/output error")

    progress = ConsoleProgress(3, ClosedTerminal())
    for step in (1, 2, 3):
        progress.log_step({"step": step, "reward_mean": 0.5})
    progress.close()
    assert progress.stream is None
