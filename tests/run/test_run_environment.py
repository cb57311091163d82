"""A multi-turn environment plugin trains the tiny model through the real CLI: the
environment's reply is part of every trajectory the model reads, never of what it is
trained on."""

from __future__ import annotations

from pathlib import Path

from cli_runs import DEFAULT_LOG_DIR, describe, read_jsonl_strict, run_retrain, workdir_with_default_config

from retrain.cli import main as cli_main


def test_a_two_turn_environment_plugin_trains_through_the_cli(tmp_path: Path, retrain_cache: Path, capsys) -> None:
    workdir = workdir_with_default_config(tmp_path)
    assert cli_main(["init-plugin", "--kind", "environment", "--name", "two_turns",
                     "--output-dir", str(workdir / "plugs")]) == 0
    capsys.readouterr()
    # Entropy-based credit: the scaffold carries the entropies of both model turns. The
    # environment scores its own episodes, so an incomplete [reward] it never reads
    # (type = "judge" without judge_model) is not in the way.
    result = run_retrain(workdir, retrain_cache, "--max-steps", "3", "--search-paths", "plugs",
                         "--environment.provider", "two_turns.TwoTurns", "--uncertainty-kind", "shannon_entropy",
                         "--reward.type", "judge")
    assert result.returncode == 0, describe(result)
    rows = read_jsonl_strict(workdir / DEFAULT_LOG_DIR / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        # Every trajectory holds the reply ("Check it once more." and the chat markup
        # around it) besides the two sampled answers.
        assert row["completion_tokens"] - row["sampled_tokens"] >= 128 * len("Check it once more.")
        assert row["trained_tokens"] <= row["sampled_tokens"]
        assert abs(row["ratio_mean"] - 1.0) < 1e-4  # the trainer scores the sampled tokens as the sampler did
    generations = read_jsonl_strict(workdir / DEFAULT_LOG_DIR / "generations.jsonl")
    assert all("\nCheck it once more.\n" in row["completion"] for row in generations)
