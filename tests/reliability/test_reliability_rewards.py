"""Rewards that would lie about the data: examples whose reference the reward can never
score, or cannot read, are reported through the command line when the data is checked
(``retrain explain`` and the start of a run), before any model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def retrain(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RETRAIN_")}
    return subprocess.run([sys.executable, "-m", "retrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env={**env, "RETRAIN_CACHE_DIR": str(cwd / "cache")})


def workdir(tmp_path: Path, answers: list[str], reward: str = "match") -> Path:
    """A folder with the default config reading ``data.jsonl`` (one example per answer)."""
    lines = [json.dumps({"prompt": f"question {index}", "answer": answer}) for index, answer in enumerate(answers)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    config = (REPO / "retrain.toml").read_text()
    config = config.replace('source = "arithmetic"', 'source = "jsonl"\npath = "data.jsonl"')
    (tmp_path / "retrain.toml").write_text(config.replace('type = "match"', f'type = "{reward}"'))
    return tmp_path


def test_explain_warns_of_empty_references_with_their_count_and_lines(tmp_path: Path):
    result = retrain(workdir(tmp_path, ["1", "", "3", " ", "5"]), "explain")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("warning: data.jsonl [data].path: 2 of 5 examples have an empty reference, which the match reward never "
            "scores as correct: line 2, line 4 — give each example its answer, or remove those examples") in result.stdout
    listed = json.loads(retrain(tmp_path, "explain", "--json").stdout)
    assert any("2 of 5 examples have an empty reference" in warning for warning in listed["warnings"])


@pytest.mark.parametrize("command", [["explain"], ["--max-steps", "1"]])
def test_data_whose_every_reference_is_empty_is_refused_before_any_model_loads(tmp_path: Path, command: list[str]):
    result = retrain(workdir(tmp_path, ["", "$ $", "."], reward="math"), *command)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert ("data.jsonl [data].path: all 3 examples have an empty reference, which the math reward never scores as "
            "correct, so nothing could be learned — give each example its answer") in result.stderr
    assert not (tmp_path / "logs").exists() and not (tmp_path / "cache").exists()  # no run, no model


def test_a_run_prints_the_warning_before_it_trains(tmp_path: Path):
    result = retrain(workdir(tmp_path, ["1", "", "3", "4"]), "--max-steps", "1", "--batch-size", "2",
                     "--group-size", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    # The path is the absolute one the run records (retrain/inputs.py).
    assert "data.jsonl [data].path: 1 of 4 examples has an empty reference" in result.stderr
    assert "retrain: warning: /" in result.stderr


def test_explain_warns_of_references_math_verify_cannot_parse(tmp_path: Path):
    pytest.importorskip("math_verify")
    result = retrain(workdir(tmp_path, ["7", r"\frac{1}{2}", "$", "}{"], reward="math"), "explain")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("2 of 4 examples have a reference math-verify cannot parse, which the math reward compares as text, as "
            "the match reward would: line 3, line 4") in result.stdout
