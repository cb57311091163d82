"""CLI start-up time: median wall time of the config commands over repeated runs.

Each command runs once first, unmeasured, so Python has written its bytecode caches, as
it has for a user after the first run (``PYTHONDONTWRITEBYTECODE`` is removed from the
commands' environment for that reason).

Run: python tests/bench/bench_cli.py [--runs 10]
Target: each median <= 0.25 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET_S = 0.25


def retrain_command() -> list[str]:
    script = Path(sys.executable).with_name("retrain")
    if script.exists():
        return [str(script)]
    found = shutil.which("retrain")
    return [found] if found else [sys.executable, "-m", "retrain"]


def median_wall_time(argv: list[str], runs: int, cwd: Path) -> float:
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    times = []
    for run in range(runs + 1):
        start = time.perf_counter()
        result = subprocess.run(argv, cwd=cwd, capture_output=True, env=environment)
        if run:
            times.append(time.perf_counter() - start)
        if result.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(argv)} failed: {result.stderr.decode()}")
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    retrain = retrain_command()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "retrain.toml").write_text((REPO / "retrain.toml").read_text())
        legacy = work / "legacy.toml"
        legacy.write_text('[backend]\nbackend = "prime_rl"\nprime_rl_transport = "zmq"  # keep\nprime_rl_zmq_port = 5555\n')
        commands = {
            "retrain --help": [*retrain, "--help"],
            "retrain explain retrain.toml": [*retrain, "explain", "retrain.toml"],
            "retrain migrate-config --check": [*retrain, "migrate-config", str(legacy), "--check"],
        }
        print(f"median wall time over {args.runs} runs (target <= {TARGET_S:.2f} s)")
        worst = 0.0
        for name, argv in commands.items():
            seconds = median_wall_time(argv, args.runs, work)
            worst = max(worst, seconds)
            print(f"  {name:<34} {seconds * 1000:7.1f} ms  {'ok' if seconds <= TARGET_S else 'SLOW'}")
    return 0 if worst <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
