"""Running ``retrain`` through the real command line, and reading what a run left.

Every run here is ``python -m retrain ...`` in a subprocess, in a temporary folder that
holds a copy of the repository's ``retrain.toml``, with ``RETRAIN_CACHE_DIR`` pointing
at one cache folder per test session so the tiny model is built once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "retrain.toml"
LOGS_DOC = REPO_ROOT / "docs" / "logs.md"
# Where the default config writes its logs, relative to the folder it runs in.
DEFAULT_LOG_DIR = Path("logs/default")


def cli_environment(cache_dir: Path) -> dict[str, str]:
    """The environment of a ``retrain`` subprocess."""
    env = dict(os.environ)
    env["RETRAIN_CACHE_DIR"] = str(cache_dir)
    env.pop("RETRAIN_DEBUG", None)
    # One intra-op thread: the tiny model gains nothing from more, and on a machine whose
    # cores are busy with other work, OpenMP threads waiting on each other make every
    # step many times slower (measured: 30x on 2 shared cores).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Settings from the caller's environment must not leak into the runs under test.
    for name in list(env):
        if name.startswith("RETRAIN_") and name != "RETRAIN_CACHE_DIR":
            del env[name]
    return env


def retrain_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "retrain", *args]


def run_retrain(cwd: Path, cache_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``retrain ARGS`` in ``cwd`` to completion."""
    return subprocess.run(retrain_command(*args), cwd=cwd, env=cli_environment(cache_dir), capture_output=True,
                          text=True, timeout=timeout, check=False)


def start_retrain(cwd: Path, cache_dir: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``retrain ARGS`` in ``cwd`` without waiting for it."""
    return subprocess.Popen(retrain_command(*args), cwd=cwd, env=cli_environment(cache_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


def workdir_with_default_config(path: Path) -> Path:
    """A folder holding a copy of the repository's ``retrain.toml``."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEFAULT_CONFIG, path / "retrain.toml")
    return path


def read_jsonl_strict(path: Path) -> list[dict[str, object]]:
    """Every line of a JSONL log; fails on a torn last line or any unreadable line."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path}: last line is torn (no final newline)"
    rows = []
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        row = json.loads(line)
        assert isinstance(row, dict), f"{path}:{number} is not a JSON object"
        rows.append(row)
    return rows


def is_timing_field(name: str) -> bool:
    """Fields that measure time or memory: the only ones two identical runs may differ in."""
    return name.endswith(("_s", "_per_s", "_mb")) or name == "overhead_frac"


def assert_rows_match(expected: list[dict[str, object]], actual: list[dict[str, object]], tolerance: float = 1e-6) -> None:
    """Same steps, same fields, and every non-timing value equal (numbers to ``tolerance``)."""
    assert [row["step"] for row in actual] == [row["step"] for row in expected]
    for want, got in zip(expected, actual):
        assert set(got) == set(want), f"step {want['step']}: fields differ: {sorted(set(got) ^ set(want))}"
        for name, value in want.items():
            if is_timing_field(name):
                continue
            other = got[name]
            if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(other, (int, float)):
                assert math.isclose(value, other, rel_tol=0.0, abs_tol=tolerance), \
                    f"step {want['step']} {name}: {value} vs {other}"
            else:
                assert value == other, f"step {want['step']} {name}: {value!r} vs {other!r}"


def load_weights(folder: Path) -> dict[str, object]:
    """The tensors of every ``*.safetensors`` file in ``folder``."""
    from safetensors.torch import load_file

    tensors: dict[str, object] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    assert tensors, f"{folder} holds no .safetensors weights"
    return tensors
