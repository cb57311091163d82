"""The default run, timed: does `retrain` with retrain.toml reach a 0.95 mean reward in 90 s?

For each seed, in a fresh folder with a fresh RETRAIN_CACHE_DIR (so building the tiny
model is part of the time), this runs ``python -m retrain retrain.toml --seed S`` and
watches its metrics.jsonl, stamping every row with the wall time since the process
started. It reports, per seed:

- the mean reward of the first ``--window`` steps (target: <= 0.2);
- the time and step at which the mean reward over the last ``--window`` steps first
  reaches ``--target`` (0.95), and the first single step that does;
- the reward curve (``reward_mean`` of every 10th step);
- the peak resident memory (largest ``peak_rss_mb`` of the run; target <= 1536 MB) and
  the time to the first row (start-up, including the model build).

Targets: the 20-step mean reward goes from <= 0.2 to >= 0.95 within the config's
max_steps, and the whole run, model build included, takes at most 90 s on 2 cores; peak
RSS <= 1.5 GB. Exit code 0 when every seed meets them.

Run: python tests/bench/bench_default_run.py [--seeds 0 1 2 3 4] [--stop-at-target] [--threads N] [--json OUT]

``--stop-at-target`` stops a run (with Ctrl-C, which checkpoints and exits) once it has
reached the target; ``--max-seconds`` stops it after that long in any case. The number
of torch threads is left to torch unless ``--threads`` is given (it sets
OMP_NUM_THREADS): the default measures what a user gets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET_REWARD = 0.95
START_REWARD_MAX = 0.2
TIME_LIMIT_S = 90.0
PEAK_RSS_LIMIT_MB = 1536.0


@dataclass
class SeedResult:
    seed: int
    exit_code: int
    wall_s: float
    first_row_s: float | None
    steps: int
    start_reward: float | None
    target_step: int | None
    target_s: float | None
    first_single_step_at_target: int | None
    final_reward: float | None
    peak_rss_mb: float | None
    load_before: float
    load_after: float
    curve_every_10: list[tuple[int, float]] = field(default_factory=list)
    passed: bool = False


def rolling_means(values: list[float], window: int) -> list[float | None]:
    """``means[i]`` = mean of ``values[i - window + 1 : i + 1]``, None before a full window."""
    means: list[float | None] = []
    total = 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        means.append(total / window if index >= window - 1 else None)
    return means


def watch_run(command: list[str], cwd: Path, env: dict[str, str], metrics: Path, window: int, target: float,
              stop_at_target: bool, max_seconds: float) -> tuple[int, float, list[tuple[float, dict[str, object]]]]:
    """Run ``command``; (exit code, wall seconds, [(seconds since start, row)])."""
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows: list[tuple[float, dict[str, object]]] = []
    rewards: list[float] = []
    offset = 0
    stopping = False
    while True:
        finished = process.poll() is not None
        if metrics.exists():
            data = metrics.read_bytes()
            end = data.rfind(b"\n") + 1
            now = time.monotonic() - start
            for line in data[offset:end].splitlines():
                row = json.loads(line)
                rows.append((now, row))
                rewards.append(float(row["reward_mean"]))
            offset = end
        if finished:
            break
        reached = len(rewards) >= window and statistics.fmean(rewards[-window:]) >= target
        if not stopping and ((stop_at_target and reached) or time.monotonic() - start > max_seconds):
            process.send_signal(signal.SIGINT)
            stopping = True
        time.sleep(0.05)
    output = process.communicate()[0]
    if process.returncode not in (0, 130):
        print(output[-3000:], file=sys.stderr)
    return process.returncode, time.monotonic() - start, rows


def measure_seed(seed: int, config: Path, args: argparse.Namespace) -> SeedResult:
    with tempfile.TemporaryDirectory(prefix=f"retrain-bench-{seed}-") as scratch:
        workdir = Path(scratch)
        shutil.copy(config, workdir / "retrain.toml")
        env = dict(os.environ)
        env["RETRAIN_CACHE_DIR"] = str(workdir / "cache")
        env["PYTHONUNBUFFERED"] = "1"
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        log_dir = workdir / "logs" / f"seed_{seed}"
        command = [sys.executable, "-m", "retrain", "retrain.toml", "--seed", str(seed), "--log-dir",
                   str(log_dir.relative_to(workdir))]
        load_before = os.getloadavg()[0]
        code, wall, stamped = watch_run(command, workdir, env, log_dir / "metrics.jsonl", args.window, args.target,
                                        args.stop_at_target, args.max_seconds)
        load_after = os.getloadavg()[0]
        if args.keep:
            shutil.copytree(log_dir, args.keep / f"seed_{seed}", dirs_exist_ok=True)
    rewards = [float(row["reward_mean"]) for _, row in stamped]
    means = rolling_means(rewards, args.window)
    reached = next((index for index, mean in enumerate(means) if mean is not None and mean >= args.target), None)
    single = next((index for index, reward in enumerate(rewards) if reward >= args.target), None)
    result = SeedResult(
        seed=seed,
        exit_code=code,
        wall_s=round(wall, 2),
        first_row_s=round(stamped[0][0], 2) if stamped else None,
        steps=len(stamped),
        start_reward=round(statistics.fmean(rewards[: args.window]), 4) if rewards else None,
        target_step=int(stamped[reached][1]["step"]) if reached is not None else None,  # type: ignore[arg-type]
        target_s=round(stamped[reached][0], 2) if reached is not None else None,
        first_single_step_at_target=int(stamped[single][1]["step"]) if single is not None else None,  # type: ignore[arg-type]
        final_reward=round(statistics.fmean(rewards[-args.window:]), 4) if rewards else None,
        peak_rss_mb=round(max(float(row["peak_rss_mb"]) for _, row in stamped), 1) if stamped else None,
        load_before=round(load_before, 2),
        load_after=round(load_after, 2),
        curve_every_10=[(int(row["step"]), round(float(row["reward_mean"]), 3))  # type: ignore[arg-type]
                        for _, row in stamped if int(row["step"]) % 10 == 0],  # type: ignore[arg-type]
    )
    result.passed = (
        code in (0, 130)
        and result.start_reward is not None and result.start_reward <= START_REWARD_MAX
        and result.target_s is not None and result.target_s <= TIME_LIMIT_S
        and (args.stop_at_target or result.wall_s <= TIME_LIMIT_S)
        and result.peak_rss_mb is not None and result.peak_rss_mb <= PEAK_RSS_LIMIT_MB
    )
    return result


def report(result: SeedResult, window: int, target: float) -> str:
    reached = (f"mean over {window} steps >= {target} at step {result.target_step}, {result.target_s} s after start"
               if result.target_step is not None else f"mean over {window} steps never reached {target}")
    lines = [
        f"seed {result.seed}: exit {result.exit_code}, {result.steps} steps in {result.wall_s} s "
        f"(first row after {result.first_row_s} s, including the model build); load average "
        f"{result.load_before} -> {result.load_after}",
        f"  reward: first {window} steps {result.start_reward}, last {window} steps {result.final_reward}; {reached}; "
        f"first single step >= {target}: {result.first_single_step_at_target}",
        f"  peak RSS {result.peak_rss_mb} MB; targets {'met' if result.passed else 'NOT met'}",
        "  reward_mean every 10th step:",
    ]
    curve = result.curve_every_10
    for begin in range(0, len(curve), 20):
        chunk = curve[begin:begin + 20]
        lines.append(f"    {chunk[0][0]:>5}: " + " ".join(f"{reward:.2f}" for _, reward in chunk))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--config", type=Path, default=REPO / "retrain.toml")
    parser.add_argument("--window", type=int, default=20, help="steps in the rolling mean of reward_mean")
    parser.add_argument("--target", type=float, default=TARGET_REWARD)
    parser.add_argument("--stop-at-target", action="store_true", help="stop each run once it reached the target")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop a run after this long")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the runs (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", type=Path, help="copy each run's log folder here")
    args = parser.parse_args(argv)

    print(f"{os.cpu_count()} CPUs; config {args.config}; threads {args.threads or 'default'}", flush=True)
    results = []
    for seed in args.seeds:
        result = measure_seed(seed, args.config, args)
        results.append(result)
        print(report(result, args.window, args.target), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=1))
    passed = sum(result.passed for result in results)
    print(f"{passed}/{len(results)} seeds met the targets (reward <= {START_REWARD_MAX} -> >= {args.target} within "
          f"max_steps, the whole run within {TIME_LIMIT_S:.0f} s including the model build, peak RSS <= "
          f"{PEAK_RSS_LIMIT_MB:.0f} MB)")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
