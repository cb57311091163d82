"""Signal-storm trials: pairs of SIGTERM/SIGINT at random gaps while a run checkpoints.

Each trial starts the default config through the real command line with a checkpoint
after every step, waits for a random number of steps, sends a random stop signal, then
in half the trials the moment the stopping step's checkpoint starts (its staging folder
appears), in the others after a random gap of up to one step (timed by the run's own
pace: the second signal lands while the step finishes, while its checkpoint is written,
or after the run stopped, when it is not sent), a second random one. The run must exit with 128 + one of the two signals,
print no traceback and no "Exception ignored" noise, and leave a folder that resumes:
``retrain --resume`` runs two more steps to completion with one metrics row per step.

Run: python tests/bench/signal_storm_trials.py [--trials 20] [--seed 0]
Prints one line per trial and a summary; exit code 0 when every trial passes.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "run"))

from cli_runs import (  # noqa: E402
    cli_environment,
    read_jsonl_strict,
    run_retrain,
    start_retrain,
    workdir_with_default_config,
)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEFERRED = "stopping once the checkpoint being written is complete"


def complete_rows(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def collect(stream: IO[str] | None, lines: list[str]) -> threading.Thread:
    def read() -> None:
        for line in stream or ():
            lines.append(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def storm(process: subprocess.Popen[str], rng: random.Random, metrics: Path, lines: list[str]) -> tuple[int, int, float]:
    """Wait for 1-4 rows, then two signals; the signals and the gap (s)."""
    target = rng.randint(1, 4)
    started = time.monotonic()
    marks = []
    for rows in (target, target + 1):  # the second wait measures the run's pace: one step
        while complete_rows(metrics) < rows:
            if process.poll() is not None or time.monotonic() - started > 300:
                raise RuntimeError(f"the run ended or stalled before {rows} rows:\n{''.join(lines)[-2000:]}")
            time.sleep(0.002)
        marks.append(time.monotonic())
    step_s = marks[1] - marks[0]
    first, second = rng.choice(SIGNALS), rng.choice(SIGNALS)
    process.send_signal(first)
    # Two identical signals sent at once arrive as one: the gap starts once the first is seen.
    seen = time.monotonic()
    while not any("finishing this step" in line for line in lines) and process.poll() is None:
        if time.monotonic() - seen > 60:
            break
        time.sleep(0.001)
    seen = time.monotonic()
    if rng.random() < 0.5:
        # Aimed: the moment the stopping step's checkpoint starts (its staging folder appears).
        checkpoints = metrics.parent / "checkpoints"
        while not any(checkpoints.glob(".step_*.partial")) and process.poll() is None:
            time.sleep(0.0005)
    else:
        time.sleep(rng.uniform(0.0, step_s))
    gap = time.monotonic() - seen
    if process.poll() is not None:
        return first, 0, gap  # it had already stopped: no second signal
    process.send_signal(second)
    return first, second, gap


def check(workdir: Path, cache: Path, log_dir: Path, code: int, first: int, second: int, output: str) -> str:
    expected = {128 + first, 128 + second} if second else {128 + first}
    if code not in expected:
        raise AssertionError(f"exit {code}, expected one of {sorted(expected)}:\n{output[-2000:]}")
    for noise in ("Traceback", "Exception ignored"):
        if noise in output:
            raise AssertionError(f"{noise!r} in the output:\n{output[-3000:]}")
    state = log_dir / "trainer_state.json"
    done = json.loads(state.read_text())["step"] if state.exists() else 0
    args = ("--resume", log_dir.name) if done else ("--max-steps", "2", "--save-every", "1", "--log-dir", log_dir.name)
    resumed = run_retrain(workdir, cache, *args, *(("--max-steps", str(done + 2)) if done else ()))
    if resumed.returncode != 0:
        raise AssertionError(f"the folder does not resume (exit {resumed.returncode}):\n{resumed.stderr[-3000:]}")
    steps = [row["step"] for row in read_jsonl_strict(log_dir / "metrics.jsonl")]
    if steps != list(range(1, done + 3)):
        raise AssertionError(f"metrics rows after resuming: {steps}")
    return f"checkpoint at step {done}, resumed to {done + 2}"


def run_trial(number: int, rng: random.Random, root: Path, cache: Path) -> bool:
    workdir = workdir_with_default_config(root / f"trial_{number}")
    log_dir = workdir / "storm"
    process = start_retrain(workdir, cache, "--max-steps", "100000", "--save-every", "1", "--log-dir", log_dir.name)
    lines: list[str] = []
    reader = collect(process.stderr, lines)
    try:
        first, second, gap = storm(process, rng, log_dir / "metrics.jsonl", lines)
        sent_second = time.monotonic()
        code = process.wait(timeout=60)
        exit_s = time.monotonic() - sent_second
        reader.join(10)
        output = "".join(lines)
        verdict = check(workdir, cache, log_dir, code, first, second, output)
    except (AssertionError, RuntimeError, subprocess.TimeoutExpired) as failure:
        process.kill()
        print(f"trial {number:2d}: FAIL {failure}")
        return False
    during = " (second signal during a checkpoint)" if DEFERRED in output else ""
    pair = f"{signal.Signals(first).name}+{signal.Signals(second).name if second else 'none (already stopped)'}"
    print(f"trial {number:2d}: {pair} gap {gap * 1000:4.0f} ms -> exit {code} after {exit_s:.2f} s{during}; {verdict}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    rng = random.Random(options.seed)
    with tempfile.TemporaryDirectory(prefix="retrain-storm-") as temporary:
        root = Path(temporary)
        cache = root / "cache"
        build = subprocess.run([sys.executable, "-c", "from retrain.models.tiny import ensure_tiny_model as e; e()"],
                               env=cli_environment(cache), capture_output=True, text=True, timeout=600, check=False)
        if build.returncode != 0:
            print(build.stderr)
            return 1
        passed = sum(run_trial(number, rng, root, cache) for number in range(1, options.trials + 1))
    print(f"{passed}/{options.trials} trials passed")
    return 0 if passed == options.trials else 1


if __name__ == "__main__":
    sys.exit(main())
