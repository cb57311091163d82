"""Crash trials: kill a run with SIGKILL at random moments, resume it, check the result.

Each trial starts the default config (a short run with frequent checkpoints) through the
real command line, kills it with SIGKILL after a random delay (seeded), and then runs it
again — ``--resume DIR`` when a checkpoint exists, the same fresh command when the kill
came before the first one — until it finishes; some resumed runs are killed again.
After every kill the folder must hold only complete checkpoints (trainer_state.json
parses and names a checkpoint that exists) and a metrics log of consecutive steps (a
torn last line is allowed: readers skip it and the next run cuts it off). A finished
trial must have exactly one row per step, byte-complete, equal in every non-timing field
to an uninterrupted reference run, the same generations, a final model that loads with
``transformers``, and final weights identical to the reference's.

Run: python tests/bench/crash_resume_trials.py [--trials 10] [--seed 0] [--max-steps 24] [--save-every 2]
Exit code 0 when every trial passes. One kill in five lands at a random moment of the
start-up (before the first metrics row, so before any checkpoint); the others at a
random moment inside a random one of the steps still to run (sampling, update, metrics
write or checkpoint), timed by the run's own pace so that load on the machine does not
let a run finish before its kill.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "run"))

from cli_runs import (  # noqa: E402
    assert_rows_match,
    cli_environment,
    load_weights,
    read_jsonl_strict,
    start_retrain,
    workdir_with_default_config,
)

from retrain.run_dirs import LOCK_FILE  # noqa: E402  (the run's lock stays in its folder, by design)

MAX_KILLS_PER_TRIAL = 3
KILL_AGAIN_PROBABILITY = 0.4


@dataclass
class Attempt:
    command: str  # "fresh" or "resume from step N"
    killed_at_s: float | None  # None: ran to the end
    rows_after: int
    state_step_after: int | None
    torn_tail: bool


@dataclass
class Trial:
    number: int
    attempts: list[Attempt] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def complete_rows(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def run_and_time(workdir: Path, cache: Path, args: list[str], max_steps: int) -> tuple[float, float]:
    """Run to the end; seconds from the start until the first and until the last
    metrics row appeared."""
    log_dir = workdir / args[args.index("--log-dir") + 1]
    start = time.monotonic()
    process = start_retrain(workdir, cache, *args)
    first_row = last_row = None
    while process.poll() is None:
        rows = complete_rows(log_dir / "metrics.jsonl")
        if first_row is None and rows > 0:
            first_row = time.monotonic() - start
        if last_row is None and rows >= max_steps:
            last_row = time.monotonic() - start
        time.sleep(0.01)
    _, stderr = process.communicate()
    if process.returncode != 0 or first_row is None:
        raise SystemExit(f"reference run failed (exit {process.returncode}):\n{stderr[-3000:]}")
    return first_row, last_row or time.monotonic() - start


def state_step(log_dir: Path) -> int | None:
    path = log_dir / "trainer_state.json"
    return int(json.loads(path.read_text())["step"]) if path.exists() else None


def check_after_kill(log_dir: Path, trial: Trial) -> tuple[int, bool]:
    """What a kill may leave: consecutive complete rows (maybe a torn tail) and a
    trainer state that names complete checkpoint files. Returns (rows, torn tail)."""
    metrics = log_dir / "metrics.jsonl"
    data = metrics.read_bytes() if metrics.exists() else b""
    lines = data.split(b"\n")
    torn = bool(lines[-1])
    steps = []
    for line in lines[:-1]:
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError) as exc:
            trial.problems.append(f"unreadable complete metrics line after a kill: {exc}")
    if steps != list(range(1, len(steps) + 1)):
        trial.problems.append(f"metrics steps after a kill are not 1..n: {steps}")
    step = None
    try:
        step = state_step(log_dir)
    except (json.JSONDecodeError, KeyError, ValueError) as exc:
        trial.problems.append(f"trainer_state.json is corrupt after a kill: {exc}")
    if step is not None:
        state = json.loads((log_dir / "trainer_state.json").read_text())
        if not (log_dir / state["checkpoint"] / "backend" / "local_backend_state.pt").is_file():
            trial.problems.append(f"trainer_state.json names {state['checkpoint']}, which has no backend state")
        try:
            load_weights(log_dir / "adapter" / f"checkpoint_step_{step}")
        except Exception as exc:  # any failure to read the weights is a corrupt checkpoint
            trial.problems.append(f"adapter checkpoint_step_{step} does not load: {exc!r}")
        if len(steps) < step:
            trial.problems.append(f"trainer state is at step {step} but only {len(steps)} rows were logged")
    return len(steps), torn


def kill_at_random_moment(process: subprocess.Popen[str], rng: random.Random, metrics: Path,
                          timing: tuple[float, float], max_steps: int) -> float | None:
    """SIGKILL ``process`` at a random moment; the seconds since its start, or None if it
    finished first.

    One kill in five lands while it starts up (before its first row; the reference run's
    start-up time bounds the delay). The others pick one of the steps still to run and
    land at a uniform moment inside it — its sampling, update, metrics write or checkpoint
    — timed by this run's own pace, so a loaded machine moves the kill with the run
    instead of letting the run finish first."""
    start = time.monotonic()
    rows_at_start = complete_rows(metrics)
    first_row_s, last_row_s = timing
    reference_step_s = (last_row_s - first_row_s) / max(max_steps - 1, 1)
    if rng.random() < 0.2:
        return _kill_after(process, rng.uniform(0.0, first_row_s), start)
    target = rng.randrange(rows_at_start, max_steps)  # kill while row target + 1 is on its way
    fraction = rng.random()
    seen, seen_at = rows_at_start, start
    step_times: list[float] = []
    while process.poll() is None:
        rows = complete_rows(metrics)
        now = time.monotonic()
        if rows != seen:
            # The first row of a process also carries its start-up; a resumed run first
            # cuts the log back to its checkpoint (rows go down).
            if rows > seen > rows_at_start:
                step_times.append((now - seen_at) / (rows - seen))
            seen, seen_at = rows, now
        if rows >= target and (rows > rows_at_start or target == rows_at_start):
            step_s = sum(step_times) / len(step_times) if step_times else reference_step_s
            # The last step ends with the final checkpoint, which takes longer than a step.
            return _kill_after(process, now - start + fraction * step_s, start)
        time.sleep(0.005)
    return None


def _kill_after(process: subprocess.Popen[str], delay_s: float, start: float) -> float | None:
    try:
        process.wait(timeout=max(0.0, delay_s - (time.monotonic() - start)))
        return None
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        return time.monotonic() - start


def run_trial(number: int, rng: random.Random, workdir: Path, cache: Path, base_args: list[str],
              timing: tuple[float, float]) -> Trial:
    trial = Trial(number)
    log_dir = workdir / f"trial_{number:02d}"
    kills = 0
    while True:
        done_step = state_step(log_dir)
        args = base_args + ["--log-dir", log_dir.name] if done_step is None else \
            ["--resume", log_dir.name, "--max-steps", base_args[base_args.index("--max-steps") + 1]]
        max_steps = int(base_args[base_args.index("--max-steps") + 1])
        kill = kills == 0 or (kills < MAX_KILLS_PER_TRIAL and rng.random() < KILL_AGAIN_PROBABILITY)
        process = start_retrain(workdir, cache, *args)
        killed_at = (kill_at_random_moment(process, rng, log_dir / "metrics.jsonl", timing, max_steps)
                     if kill else None)
        _, stderr = process.communicate(timeout=600)
        command = "fresh" if done_step is None else f"resume from step {done_step}"
        if killed_at is None:
            if process.returncode != 0:
                trial.problems.append(f"{command} exited {process.returncode}: {stderr[-2000:]}")
                return trial
            rows = complete_rows(log_dir / "metrics.jsonl")
            trial.attempts.append(Attempt(command, None, rows, state_step(log_dir), False))
            if kill:
                # It finished before the kill came: start the trial over in a new folder.
                trial.problems.append("finished before the kill (no crash tested)")
            return trial
        kills += 1
        rows, torn = check_after_kill(log_dir, trial)
        trial.attempts.append(Attempt(command, killed_at, rows, state_step(log_dir), torn))
        if trial.problems:
            return trial


def check_finished(trial: Trial, log_dir: Path, reference: Path, max_steps: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        rows = read_jsonl_strict(log_dir / "metrics.jsonl")
        assert [row["step"] for row in rows] == list(range(1, max_steps + 1)), [row["step"] for row in rows]
        assert_rows_match(read_jsonl_strict(reference / "metrics.jsonl"), rows)
        assert read_jsonl_strict(log_dir / "generations.jsonl") == read_jsonl_strict(reference / "generations.jsonl")
        state = json.loads((log_dir / "trainer_state.json").read_text())
        assert state["step"] == max_steps, state["step"]
        AutoModelForCausalLM.from_pretrained(log_dir / "adapter" / "final")
        want, got = load_weights(reference / "adapter" / "final"), load_weights(log_dir / "adapter" / "final")
        assert all(torch.equal(want[name], got[name]) for name in want), "final weights differ from the reference"
    except AssertionError as exc:
        trial.problems.append(f"finished run differs: {exc}")


def leftovers(log_dir: Path) -> list[str]:
    """Hidden staging files and folders an interrupted write left behind (harmless)."""
    return sorted(str(path.relative_to(log_dir)) for path in log_dir.rglob(".*") if path.name != LOCK_FILE)


def summary_line(trial: Trial, log_dir: Path) -> str:
    parts = []
    for attempt in trial.attempts:
        if attempt.killed_at_s is None:
            parts.append(f"{attempt.command} -> finished")
        else:
            parts.append(f"{attempt.command}, killed at {attempt.killed_at_s:.2f}s after {attempt.rows_after} rows "
                         f"(checkpoint {attempt.state_step_after}{', torn tail' if attempt.torn_tail else ''})")
    status = "ok" if not trial.problems else "FAIL: " + "; ".join(trial.problems)
    extra = f" [staging leftovers: {len(leftovers(log_dir))}]" if leftovers(log_dir) else ""
    return f"trial {trial.number:2d}: " + " | ".join(parts) + f" => {status}{extra}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--max-steps", type=int, default=24)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--cache", type=Path, help="RETRAIN_CACHE_DIR to use (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="retrain-crash-") as scratch:
        workdir = workdir_with_default_config(args.workdir or Path(scratch) / "runs")
        cache = args.cache or Path(scratch) / "cache"
        build = subprocess.run([sys.executable, "-c", "from retrain.models.tiny import ensure_tiny_model as e; e()"],
                               env=cli_environment(cache), capture_output=True, text=True, check=False)
        if build.returncode != 0:
            raise SystemExit(f"building the tiny model failed:\n{build.stderr[-3000:]}")
        base_args = ["--max-steps", str(args.max_steps), "--save-every", str(args.save_every)]
        first_row_s, last_row_s = run_and_time(workdir, cache, base_args + ["--log-dir", "reference"], args.max_steps)
        print(f"reference run: first metrics row after {first_row_s:.2f}s, last after {last_row_s:.2f}s", flush=True)
        rng = random.Random(args.seed)
        failures = 0
        kills = resumes = torn = 0
        for number in range(args.trials):
            trial = run_trial(number, rng, workdir, cache, base_args, (first_row_s, last_row_s))
            log_dir = workdir / f"trial_{number:02d}"
            if not trial.problems:
                check_finished(trial, log_dir, workdir / "reference", args.max_steps)
            failures += bool(trial.problems)
            kills += sum(attempt.killed_at_s is not None for attempt in trial.attempts)
            resumes += sum(attempt.command.startswith("resume") for attempt in trial.attempts)
            torn += sum(attempt.torn_tail for attempt in trial.attempts)
            print(summary_line(trial, log_dir), flush=True)
        print(f"{args.trials - failures}/{args.trials} trials passed ({kills} kills, {resumes} resumed runs, "
              f"{torn} torn metrics tails after a kill)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
