"""Recipes compared: which advantage/transform pair should the embedded default use?

For every (task, recipe, seed) of a grid this runs the real CLI,
``python -m retrain retrain.toml --seed S --log-dir ... <task flags> <recipe flags>``, in a
fresh temporary folder with a fresh RETRAIN_CACHE_DIR (so building the tiny model is part
of every run's wall time), and reads the run's ``metrics.jsonl`` while it grows, stamping
each row with the seconds since the process started. Per run it records:

- the first step at which the mean of ``reward_mean`` over the last ``--window`` (20)
  steps reaches ``--target`` (0.95), and how many seconds after the start that was;
- the final and the best 20-step mean reward;
- the wall time of the whole run (start-up and model build included), the time to the
  first metrics row, and the training speed in steps per second after the first row.

It prints one line per run as it finishes, then a table per task x recipe: seeds reaching
the target, median and worst step at which they did ("never" counts as later than any
step), mean +- std of the final 20-step mean, mean of the best 20-step mean, median wall
time and median steps/s.

Target for the default recipe (DEFAULT_RECIPE below): the 20-step mean reaches 0.95
within max_steps on every seed, and the whole run takes at most ``--wall-limit`` (90 s)
including the model build. The exit code is 1 when the default recipe is in the grid
and misses that on any seed of the ``--check-tasks`` (by default the shipped task,
``arithmetic``), 2 when a run failed, 0 otherwise.

Tasks: ``arithmetic`` is the built-in source of retrain.toml ("a+b mod 10="); any other
name is the file configs/data/<name>.jsonl read with ``--source jsonl --path`` (written by
tests/bench/make_tasks.py: ``subtraction``, ``multiplication``, ``maximum``); a path to a
``.jsonl`` file works too.

Recipes: ``ADVANTAGE+TRANSFORM`` (``maxrl+gtpo_sepa``), optionally followed by
``,key=value`` settings passed to the CLI as ``--key value``, e.g.
``maxrl+gtpo_sepa,lr=5e-4,sepa.steps=200,max-steps=1500``. Settings in a recipe win over
``--max-steps`` and over the config file.

Run (here pinned to one core with one torch thread, the conditions the recipe figures were
measured under on a 2-core machine shared with other work; drop both to measure what a
user gets):
  taskset -c 1 python tests/bench/bench_recipes.py --threads 1 [--tasks arithmetic subtraction]
      [--recipes grpo+none maxrl+gtpo_sepa] [--seeds 0 1 2 3 4] [--max-steps 2000] [--json OUT]

Runs go one after another; a 2000-step run took 36-95 s on one shared core, so the whole
default grid (4 tasks x 7 recipes x 5 seeds, 140 runs) takes about two and a half hours. ``--shared-cache`` builds the model
once for all runs instead (faster, but then wall times exclude the build).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_default_run import rolling_means  # this folder is the script's first import path

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "configs" / "data"
TARGET_REWARD = 0.95
WINDOW = 20
WALL_LIMIT_S = 90.0
BUILTIN_TASK = "arithmetic"
TASKS = ["arithmetic", "subtraction", "multiplication", "maximum"]
RECIPES = [
    "grpo+none",
    "maxrl+none",
    "grpo+gtpo",
    "maxrl+gtpo",
    "maxrl+gtpo_sepa",
    "maxrl+gtpo_hicra",
    "grpo+gtpo_sepa",
]
# The recipe proposed for retrain.toml, spelled as CLI settings so that it can be checked
# whatever the config file says today.
DEFAULT_RECIPE = "maxrl+gtpo_sepa"


@dataclass
class RunResult:
    task: str
    recipe: str
    seed: int
    exit_code: int
    max_steps: int | None
    steps: int
    wall_s: float
    first_row_s: float | None
    steps_per_s: float | None
    start_mean: float | None
    target_step: int | None
    target_s: float | None
    final_mean: float | None
    best_mean: float | None
    best_step: int | None
    command: list[str] = field(default_factory=list)
    rewards: list[float] | None = None


def parse_recipe(spec: str) -> list[str]:
    """CLI flags for ``ADV+TRANSFORM[,key=value...]``."""
    head, *settings = [part.strip() for part in spec.split(",")]
    advantage, plus, transform = head.partition("+")
    if not plus or not advantage or not transform:
        raise ValueError(f"recipe {spec!r}: expected ADVANTAGE+TRANSFORM[,key=value...]")
    flags = ["--advantage-mode", advantage, "--transform-mode", transform]
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals or not key:
            raise ValueError(f"recipe {spec!r}: setting {setting!r} is not key=value")
        flags += [f"--{key.lstrip('-')}", value]
    return flags


def task_flags(task: str) -> list[str]:
    """CLI flags selecting the data of ``task``."""
    if task == BUILTIN_TASK:
        return ["--source", "arithmetic"]
    path = Path(task) if task.endswith(".jsonl") else DATA_DIR / f"{task}.jsonl"
    if not path.is_file():
        raise ValueError(f"task {task!r}: no file {path} (write it with tests/bench/make_tasks.py)")
    return ["--source", "jsonl", "--path", str(path.resolve())]


def watch_run(command: list[str], cwd: Path, env: dict[str, str], metrics: Path,
              max_seconds: float) -> tuple[int, float, list[tuple[float, dict[str, object]]], str]:
    """Run ``command``; (exit code, wall seconds, [(seconds since start, row)], output)."""
    start = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
        rows: list[tuple[float, dict[str, object]]] = []
        offset = 0
        partial = b""
        stopping = False
        while True:
            finished = process.poll() is not None
            if metrics.exists():
                with metrics.open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
                offset += len(data)
                now = time.monotonic() - start
                partial += data
                *complete, partial = partial.split(b"\n")
                rows += [(now, json.loads(line)) for line in complete if line.strip()]
            if finished:
                break
            if not stopping and time.monotonic() - start > max_seconds:
                process.send_signal(signal.SIGINT)
                stopping = True
            time.sleep(0.1)
        wall = time.monotonic() - start
        output.seek(0)
        text = output.read()
    return process.returncode, wall, rows, text


def measure(task: str, recipe: str, seed: int, args: argparse.Namespace) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="retrain-recipes-") as scratch:
        workdir = Path(scratch)
        shutil.copy(args.config, workdir / "retrain.toml")
        env = dict(os.environ)
        env["RETRAIN_CACHE_DIR"] = str(args.shared_cache_dir or workdir / "cache")
        env["PYTHONUNBUFFERED"] = "1"
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        log_dir = Path("logs") / "run"
        command = [sys.executable, "-m", "retrain", "retrain.toml", "--seed", str(seed), "--log-dir", str(log_dir),
                   *task_flags(task)]
        if args.max_steps:
            command += ["--max-steps", str(args.max_steps)]
        command += parse_recipe(recipe)
        code, wall, stamped, output = watch_run(command, workdir, env, workdir / log_dir / "metrics.jsonl",
                                                args.max_seconds)
        max_steps = None
        config_snapshot = workdir / log_dir / "config.toml"
        if config_snapshot.exists():
            max_steps = int(tomllib.loads(config_snapshot.read_text()).get("training", {}).get("max_steps", 0)) or None
    if code not in (0, 130):
        print(f"run failed ({task}, {recipe}, seed {seed}), exit {code}:\n{output[-3000:]}", file=sys.stderr)
    rewards = [float(row["reward_mean"]) for _, row in stamped]
    means = rolling_means(rewards, args.window)
    reached = next((i for i, mean in enumerate(means) if mean is not None and mean >= args.target), None)
    full = [(i, mean) for i, mean in enumerate(means) if mean is not None]
    best = max(full, key=lambda item: item[1]) if full else None
    span = stamped[-1][0] - stamped[0][0] if len(stamped) > 1 else 0.0
    return RunResult(
        task=task,
        recipe=recipe,
        seed=seed,
        exit_code=code,
        max_steps=max_steps,
        steps=len(stamped),
        wall_s=round(wall, 2),
        first_row_s=round(stamped[0][0], 2) if stamped else None,
        steps_per_s=round((len(stamped) - 1) / span, 1) if span > 0 else None,
        start_mean=round(statistics.fmean(rewards[: args.window]), 4) if rewards else None,
        target_step=int(stamped[reached][1]["step"]) if reached is not None else None,  # type: ignore[arg-type]
        target_s=round(stamped[reached][0], 2) if reached is not None else None,
        final_mean=round(full[-1][1], 4) if full else None,
        best_mean=round(best[1], 4) if best else None,
        best_step=int(stamped[best[0]][1]["step"]) if best else None,  # type: ignore[arg-type]
        command=command,
        rewards=[round(reward, 4) for reward in rewards] if args.curves else None,
    )


def run_passes(result: RunResult, wall_limit: float) -> bool:
    """Reached the target within its max_steps (and within the wall limit when one is set)."""
    return (result.exit_code in (0, 130) and result.target_step is not None
            and (not wall_limit or result.wall_s <= wall_limit))


def _median_step(steps: list[int | None]) -> float:
    """Median with "never" (None) counted as later than any step (math.inf)."""
    return statistics.median([math.inf if step is None else step for step in steps])


def _step_text(value: float) -> str:
    return "never" if value == math.inf else f"{value:.0f}"


def summarize(results: list[RunResult], wall_limit: float) -> list[dict[str, object]]:
    rows = []
    keys = list(dict.fromkeys((result.task, result.recipe) for result in results))
    for task, recipe in keys:
        group = [result for result in results if (result.task, result.recipe) == (task, recipe)]
        finals = [result.final_mean for result in group if result.final_mean is not None]
        bests = [result.best_mean for result in group if result.best_mean is not None]
        steps = [result.target_step for result in group]
        speeds = [result.steps_per_s for result in group if result.steps_per_s]
        rows.append({
            "task": task,
            "recipe": recipe,
            "seeds": len(group),
            "reached": sum(step is not None for step in steps),
            "passed": sum(run_passes(result, wall_limit) for result in group),
            "median_target_step": _median_step(steps),
            "worst_target_step": max(math.inf if step is None else step for step in steps),
            "final_mean": statistics.fmean(finals) if finals else None,
            "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "final_min": min(finals) if finals else None,
            "best_mean": statistics.fmean(bests) if bests else None,
            "median_wall_s": statistics.median(result.wall_s for result in group),
            "median_steps_per_s": statistics.median(speeds) if speeds else None,
        })
    return rows


def table(rows: list[dict[str, object]], target: float, window: int) -> str:
    header = (f"| task | recipe | reached {target} | median step | worst step | final {window}-step mean "
              f"(mean ± std) | min final | best {window}-step mean | median wall s | median steps/s |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        final = "-" if row["final_mean"] is None else f"{row['final_mean']:.3f} ± {row['final_std']:.3f}"
        lines.append(
            f"| {row['task']} | {row['recipe']} | {row['reached']}/{row['seeds']} "
            f"| {_step_text(row['median_target_step'])} | {_step_text(row['worst_target_step'])} | {final} "
            f"| {'-' if row['final_min'] is None else format(row['final_min'], '.3f')} "
            f"| {'-' if row['best_mean'] is None else format(row['best_mean'], '.3f')} "
            f"| {row['median_wall_s']:.1f} "
            f"| {'-' if row['median_steps_per_s'] is None else format(row['median_steps_per_s'], '.1f')} |")
    return "\n".join(lines)


def run_line(result: RunResult) -> str:
    reached = (f"{result.target_step} ({result.target_s} s)" if result.target_step is not None else "never")
    return (f"{result.task:<15} {result.recipe:<28} seed {result.seed}: exit {result.exit_code}, "
            f"{result.steps} steps, wall {result.wall_s} s (first row {result.first_row_s} s), "
            f"{result.steps_per_s} steps/s; start {result.start_mean}, reached at {reached}, "
            f"final {result.final_mean}, best {result.best_mean} at {result.best_step}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS, help=f"default: {' '.join(TASKS)}")
    parser.add_argument("--recipes", nargs="+", default=RECIPES, help="ADV+TRANSFORM[,key=value...]; "
                        f"default: {' '.join(RECIPES)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--max-steps", type=int, default=0, help="override max_steps (0: the config's)")
    parser.add_argument("--default-recipe", default=DEFAULT_RECIPE, help="the recipe the exit code checks")
    parser.add_argument("--check-tasks", nargs="+", default=[BUILTIN_TASK],
                        help="tasks on which the default recipe must meet the target")
    parser.add_argument("--config", type=Path, default=REPO / "retrain.toml")
    parser.add_argument("--window", type=int, default=WINDOW, help="steps in the rolling mean of reward_mean")
    parser.add_argument("--target", type=float, default=TARGET_REWARD)
    parser.add_argument("--wall-limit", type=float, default=WALL_LIMIT_S,
                        help="seconds a run of the default may take; 0: do not check")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop a run (Ctrl-C) after this long")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the runs (0: torch's default)")
    parser.add_argument("--shared-cache", action="store_true",
                        help="build the tiny model once for all runs (wall times then exclude the build)")
    parser.add_argument("--json", type=Path, help="also write every run and the summary here")
    parser.add_argument("--curves", action="store_true", help="include every step's reward_mean in the JSON")
    args = parser.parse_args(argv)
    try:
        for recipe in args.recipes:
            parse_recipe(recipe)
        for task in args.tasks:
            task_flags(task)
    except ValueError as exc:
        parser.error(str(exc))

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(f"{os.cpu_count()} CPUs, this process may use {affinity}; threads {args.threads or 'default'}; "
          f"load average {os.getloadavg()[0]:.2f}; config {args.config}", flush=True)
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="retrain-recipes-cache-") as shared:
        args.shared_cache_dir = Path(shared) if args.shared_cache else None
        for task in args.tasks:
            for recipe in args.recipes:
                for seed in args.seeds:
                    result = measure(task, recipe, seed, args)
                    results.append(result)
                    print(run_line(result), flush=True)
    load_after = os.getloadavg()[0]

    rows = summarize(results, args.wall_limit)
    print(f"\nload average at the end {load_after:.2f}\n")
    print(table(rows, args.target, args.window))

    failed = [result for result in results if result.exit_code not in (0, 130)]
    checked = [result for result in results
               if result.recipe == args.default_recipe and result.task in args.check_tasks]
    missed = [result for result in checked if not run_passes(result, args.wall_limit)]
    if checked:
        limit = f" in at most {args.wall_limit:.0f} s" if args.wall_limit else ""
        verdict = "met" if not missed else "NOT met"
        print(f"\ndefault recipe {args.default_recipe}: {args.window}-step mean >= {args.target} within max_steps"
              f"{limit} on {len(checked) - len(missed)}/{len(checked)} runs ({', '.join(args.check_tasks)}): "
              f"target {verdict}")
        for result in missed:
            reached = "never reached" if result.target_step is None else f"reached at step {result.target_step}"
            print(f"  missed: {result.task} seed {result.seed} ({reached}, exit {result.exit_code}, "
                  f"wall {result.wall_s} s)")
    else:
        print(f"\ndefault recipe {args.default_recipe} not in the grid on {', '.join(args.check_tasks)}: not checked")
    if args.json:
        args.json.write_text(json.dumps({
            "cpus": os.cpu_count(), "affinity": affinity, "threads": args.threads, "load_after": load_after,
            "target": args.target, "window": args.window, "wall_limit_s": args.wall_limit,
            "default_recipe": args.default_recipe, "check_tasks": args.check_tasks,
            "default_passed": bool(checked) and not missed,
            "summary": [{key: (None if value == math.inf else value) for key, value in row.items()} for row in rows],
            "runs": [asdict(result) for result in results],
        }, indent=1))
    if failed:
        return 2
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
