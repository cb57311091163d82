"""Hang probes: runs whose judge server hangs or drips, stopped by two signals or by the
deadline alone.

Each trial starts the default config with the judge reward pointed at a loopback server
(tests/reliability/hostile_server.py) that either never answers (``hang``) or sends one
byte every 200 ms (``drip``). Signal trials send a random stop signal once the judge has
a request, wait until the run has seen it, then send a second one and time how long the
process takes to exit: it must be under 5 s, with exit code 128 + the second signal and
no traceback. Deadline trials send nothing, with ``[reward] timeout_s = 2``: the run must
fail with exit code 2 and the deadline error within 2 s of the judge's first request
(plus the time to print it; the figure is reported).

Run: python tests/bench/hang_probe_trials.py [--trials 10] [--seed 0]
Prints one line per trial and the worst times; exit code 0 when every trial passes.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "run"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))

from cli_runs import cli_environment, retrain_command, workdir_with_default_config  # noqa: E402
from hostile_server import HostileServer  # noqa: E402

SIGNALS = (signal.SIGTERM, signal.SIGINT)
JUDGE = ("--reward-type", "judge", "--judge-model", "grader", "--max-steps", "3", "--save-every", "0")


def start(workdir: Path, cache: Path, server: HostileServer, timeout_s: str) -> tuple[subprocess.Popen[str], list[str]]:
    env = {**cli_environment(cache), "OPENAI_BASE_URL": server.url}
    process = subprocess.Popen(retrain_command(*JUDGE, "--timeout-s", timeout_s), cwd=workdir, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert process.stderr is not None
    stream = process.stderr
    threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True).start()
    return process, lines


def signal_trial(workdir: Path, cache: Path, mode: str, rng: random.Random) -> tuple[bool, float, str]:
    server = HostileServer(mode=mode, drip_s=0.2).start()
    process, lines = start(workdir, cache, server, "3600")
    try:
        if not server.got_request.wait(300):
            return False, 0.0, "the judge never got a request"
        first, second = rng.choice(SIGNALS), rng.choice(SIGNALS)
        process.send_signal(first)
        seen = time.monotonic()
        while not any("finishing this step" in line for line in lines) and time.monotonic() - seen < 60:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 2.0))
        process.send_signal(second)
        sent = time.monotonic()
        code = process.wait(timeout=60)
        elapsed = time.monotonic() - sent
        time.sleep(0.2)  # the reader thread takes the last lines
        output = "".join(lines)
        ok = elapsed < 5.0 and code == 128 + second and "Traceback" not in output
        return ok, elapsed, f"{signal.Signals(first).name}+{signal.Signals(second).name} exit {code}"
    finally:
        process.kill()
        server.stop()


def deadline_trial(workdir: Path, cache: Path, mode: str) -> tuple[bool, float, str]:
    server = HostileServer(mode=mode, drip_s=0.2).start()
    process, lines = start(workdir, cache, server, "2")
    try:
        if not server.got_request.wait(300):
            return False, 0.0, "the judge never got a request"
        asked = time.monotonic()
        code = process.wait(timeout=120)
        elapsed = time.monotonic() - asked
        time.sleep(0.2)
        output = "".join(lines)
        ok = code == 2 and "did not answer within its 2 s deadline" in output and "Traceback" not in output
        return ok, elapsed, f"no signal, exit {code}"
    finally:
        process.kill()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    rng = random.Random(options.seed)
    worst: dict[str, float] = {}
    failures = 0
    with tempfile.TemporaryDirectory(prefix="retrain-hang-") as temporary:
        root = Path(temporary)
        cache = root / "cache"
        for number in range(1, options.trials + 1):
            mode = ("hang", "drip")[number % 2]
            kind = "deadline" if number % 3 == 0 else "signals"
            workdir = workdir_with_default_config(root / f"trial_{number}")
            ok, elapsed, what = (deadline_trial(workdir, cache, mode) if kind == "deadline"
                                 else signal_trial(workdir, cache, mode, rng))
            worst[kind] = max(worst.get(kind, 0.0), elapsed)
            failures += not ok
            after = "after the second signal" if kind == "signals" else "after the judge's first request"
            print(f"trial {number:2d}: {mode:4s} {what}: exited {elapsed:.2f} s {after}{'' if ok else '  FAIL'}")
    print(f"worst: {', '.join(f'{kind} {seconds:.2f} s' for kind, seconds in sorted(worst.items()))}; "
          f"{options.trials - failures}/{options.trials} trials passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
