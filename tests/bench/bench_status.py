"""``retrain status`` over many run folders: wall time in this process and as a command.

Builds, in a temporary folder, 100 run folders shaped like real ones: a 500-row
``metrics.jsonl`` (rows of the real fields, ~2 KB each), a config snapshot, a trainer
state with RNG arrays as large as a real one's, a lock, a checkpoint and an adapter
folder; a third of them are unfinished. Then times ``status --json`` on them: its
``main`` in this process (the reading and rendering alone), and ``python -m retrain
status --json`` (Python's start-up included), each run once unmeasured first.

Run: python tests/bench/bench_status.py [--runs 10] [--folders 100] [--rows 500]
Target: each median < 0.5 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retrain.commands import status
from retrain.config.schema import Config
from retrain.config.snapshot import write_snapshot

TARGET_S = 0.5
MAX_STEPS_MARK = "\n<max_steps>\n"
FIELDS = (
    "reward_mean", "reward_std", "reward_min", "reward_max", "correct_rate", "prompts", "completions",
    "groups_informative", "groups_dropped", "completion_tokens", "sampled_tokens", "completion_len_mean",
    "completion_len_max", "truncated_rate", "loss", "skipped", "skipped_updates", "grad_norm", "ratio_mean",
    "ratio_max", "clip_fraction", "trained_tokens", "policy_version", "policy_staleness", "sample_time_s",
    "reward_time_s", "collect_time_s", "credit_time_s", "train_time_s", "sync_time_s", "step_time_s",
    "overhead_time_s", "overhead_frac", "tokens_per_s", "peak_rss_mb", "peak_memory_mb", "refill_rounds",
    "refill_prompts", "groups_total", "groups_all_correct", "groups_all_wrong", "groups_other_ties",
    "advantage_mean", "advantage_std", "token_advantage_mean", "token_advantage_std", "tokens_total",
    "planning_token_fraction", "uncertainty_mean", "uncertainty_std", "uncertainty_max", "sepa_lambda",
    "sepa_gate_open", "exec_uncertainty_mean", "exec_uncertainty_var", "exec_uncertainty_mean_pooled",
    "exec_uncertainty_var_pooled", "planning_uncertainty_mean", "planning_uncertainty_var",
    "planning_uncertainty_mean_pooled", "planning_uncertainty_var_pooled", "plugin_repaired_sequences",
)


def make_run(folder: Path, rows: int, max_steps: int, snapshot: str, randomness: random.Random) -> None:
    (folder / "checkpoints" / f"step_{rows}" / "backend").mkdir(parents=True)
    (folder / "checkpoints" / f"step_{rows}" / "backend" / "state.pt").write_bytes(b"\0" * 4096)
    (folder / "adapter" / "final").mkdir(parents=True)
    (folder / "adapter" / ".retrain-run").write_text(f"{folder}\n")
    (folder / "adapter" / "final" / "model.safetensors").write_bytes(b"\0" * 4096)
    lines = [json.dumps({"step": step, **{name: randomness.random() for name in FIELDS}})
             for step in range(1, rows + 1)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "config.toml").write_text(snapshot.replace(MAX_STEPS_MARK, f"\nmax_steps = {max_steps}\n"))
    state = {"version": 2, "step": rows, "seed": 0, "checkpoint": f"checkpoints/step_{rows}",
             "rng": {"python": [3, list(range(625)), None], "numpy": ["MT19937", list(range(624)), 0, 0, 0.0]}}
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=1))
    (folder / ".retrain.lock").touch()


def build(root: Path, folders: int, rows: int) -> None:
    snapshot_path = root / "snapshot.toml"
    write_snapshot(Config(), snapshot_path)
    # The snapshot of the defaults, with its [training] max_steps line marked for make_run.
    snapshot, found = re.subn(r"\nmax_steps = \d+\n", MAX_STEPS_MARK, snapshot_path.read_text(), count=1)
    snapshot_path.unlink()
    assert found == 1, "the config snapshot has no max_steps line: update this benchmark"
    randomness = random.Random(0)
    for number in range(folders):
        # Two in three finished (max_steps = rows logged), one in three halfway.
        make_run(root / "sweep" / f"run{number:03d}", rows, rows if number % 3 else 2 * rows, snapshot, randomness)


def in_process_seconds(root: Path, runs: int) -> float:
    times = []
    for run in range(runs + 1):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            status.main([str(root), "--json"])
        if run:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def command_seconds(root: Path, runs: int) -> tuple[float, str]:
    times, output = [], ""
    for run in range(runs + 1):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "retrain", "status", "--json", str(root)], capture_output=True,
                                text=True, check=False)
        if run:
            times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"retrain status failed: {result.stderr}")
        output = result.stdout
    return statistics.median(times), output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--folders", type=int, default=100)
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        build(root, args.folders, args.rows)
        size = sum(path.stat().st_size for path in root.rglob("metrics.jsonl"))
        print(f"{args.folders} run folders, {args.rows} rows each ({size / 1e6:.1f} MB of metrics.jsonl)")
        inside = in_process_seconds(root, args.runs)
        command, output = command_seconds(root, args.runs)
    states = [run["state"] for run in json.loads(output)["runs"]]
    assert len(states) == args.folders, f"status found {len(states)} of {args.folders} runs"
    print(f"  found {states.count('done')} done, {states.count('stale')} stale")
    failed = False
    for label, seconds in (("status --json, in process", inside), ("python -m retrain status --json", command)):
        verdict = "ok" if seconds < TARGET_S else f"OVER the {TARGET_S} s target"
        failed |= seconds >= TARGET_S
        print(f"  {label:<34} median {seconds * 1000:6.1f} ms over {args.runs} runs  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
