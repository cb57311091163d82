"""Planning a campaign: every condition x seed resolved through the config resolver, with
the campaign format of the closest existing project, the layering of condition, command
line and run identity, validation of every run at once, and the summary's statistics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from retrain.campaign import plan_campaign
from retrain.campaign_summary import across_seeds, run_figures, summary_markdown, window_means
from retrain.config.flags import parse_run_args
from retrain.errors import ConfigError

BASE = """
[backend]
devices = "cpu"
[model]
model = "retrain/tiny"
lora_rank = 0
[training]
max_steps = 50
batch_size = 2
group_size = 4
max_tokens = 4
lr = 3e-4
[data]
source = "arithmetic"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campaign.toml"
    path.write_text(BASE + text)
    return path


def overrides(*argv: str):
    return parse_run_args(["x.toml", *argv], {}).overrides


def test_no_conditions_means_the_five_condition_ablation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    campaign = plan_campaign(write(tmp_path, "[campaign]\n"))
    assert [run.name for run in campaign.runs] == ["grpo+none_s42", "maxrl+none_s42", "maxrl+gtpo_s42",
                                                   "maxrl+gtpo_hicra_s42", "maxrl+gtpo_sepa_s42"]
    assert campaign.directory == Path("logs/campaign")
    config = campaign.runs[3].resolved.config
    assert (config.algorithm.advantage_mode, config.algorithm.transform_mode) == ("maxrl", "gtpo_hicra")


def test_the_closest_projects_format_loads_with_bare_setting_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    campaign = plan_campaign(write(tmp_path, """
[logging]
log_dir = "sweeps/lr"
wandb_project = "lr-sweep"
[campaign]
seeds = [42, 101]
max_steps = 20
parallel = true
max_workers = 4
stagger_seconds = 10
[[campaign.conditions]]
advantage_mode = "grpo"
transform_mode = "none"
name = "low"
lr = 4e-6
[[campaign.conditions]]
advantage_mode = "grpo"
transform_mode = "none"
name = "high"
lr = 1.6e-4
training = { clip_eps = 0.2 }
"""))
    assert campaign.settings.parallel and campaign.settings.max_workers == 4 and campaign.settings.stagger_seconds == 10
    by_name = {run.name: run.resolved.config for run in campaign.runs}
    assert sorted(by_name) == ["high_s101", "high_s42", "low_s101", "low_s42"]
    high = by_name["high_s101"]
    assert high.training.lr == 1.6e-4 and high.training.clip_eps == 0.2 and high.training.max_steps == 20
    assert high.training.seed == 101 and by_name["low_s42"].training.lr == 4e-6
    assert high.logging.log_dir == "sweeps/lr/runs/high_s101"
    assert high.backend.adapter_path == "sweeps/lr/runs/high_s101/adapter"
    assert (high.logging.wandb_run_name, high.logging.wandb_group, high.logging.wandb_tags) == (
        "high_s101", "high", "high,seed101")
    assert high.campaign.conditions == [] and high.squeeze.adapter_path == ""  # a run is not a campaign


def test_command_line_overrides_apply_to_every_run_but_not_to_what_makes_a_run_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, """
[campaign]
seeds = [1, 2]
max_steps = 30
[[campaign.conditions]]
advantage_mode = "maxrl"
transform_mode = "none"
overrides = { "training.lr" = 1e-3 }
""")
    campaign = plan_campaign(path, overrides("--max-steps", "5", "--lr", "2e-3", "--seed", "9", "--log-dir", "out"))
    assert [run.name for run in campaign.runs] == ["maxrl+none_s1", "maxrl+none_s2"]
    for run, seed in zip(campaign.runs, (1, 2)):
        config = run.resolved.config
        assert (config.training.max_steps, config.training.lr, config.training.seed) == (5, 2e-3, seed)
        assert config.logging.log_dir == f"out/runs/maxrl+none_s{seed}"
    assert campaign.directory == Path("out")


def test_every_runs_problems_are_reported_at_once(tmp_path):
    path = write(tmp_path, """
[campaign]
seeds = [1]
[[campaign.conditions]]
advantage_mode = "maxrl"
transform_mode = "none"
lr = -1.0
[[campaign.conditions]]
advantage_mode = "grpo"
transform_mode = "none"
batch_sise = 3
[[campaign.conditions]]
advantage_mode = "grpo"
transform_mode = "gtpo"
overrides = { "training.group_size" = 0 }
""")
    with pytest.raises(ConfigError) as caught:
        plan_campaign(path)
    text = str(caught.value)
    assert "batch_sise" in text and "did you mean 'batch_size'" in text
    assert "lr" in text and "group_size" in text and len(caught.value.issues) >= 3


def test_a_cross_field_rule_applies_to_each_run(tmp_path):
    path = write(tmp_path, """
[campaign]
seeds = [1]
[[campaign.conditions]]
advantage_mode = "maxrl"
transform_mode = "none"
[[campaign.conditions]]
advantage_mode = "maxrl"
transform_mode = "none"
name = "clipped"
clip_eps_high = 0.1
""")
    with pytest.raises(ConfigError, match="clipped_s1"):
        plan_campaign(path)


def test_duplicate_condition_names_and_seeds_are_refused(tmp_path):
    path = write(tmp_path, """
[campaign]
seeds = [1, 1]
[[campaign.conditions]]
advantage_mode = "grpo"
transform_mode = "none"
[[campaign.conditions]]
advantage_mode = "grpo"
transform_mode = "none"
""")
    with pytest.raises(ConfigError) as caught:
        plan_campaign(path)
    assert "duplicate condition name" in str(caught.value) and "a seed is listed twice" in str(caught.value)


def test_window_means_and_run_figures_by_hand():
    assert window_means([1.0, 2.0, 3.0], window=2) == [1.5, 2.5]
    assert window_means([1.0, 3.0], window=20) == [2.0]
    rows = [{"step": step, "reward_mean": 0.5 if step <= 20 else 1.0, "correct_rate": 0.25, "step_time_s": 0.5}
            for step in range(1, 41)]
    figures = run_figures(rows, threshold=0.75)
    assert figures["final_reward"] == 1.0 and figures["best_reward"] == 1.0 and figures["correct_rate"] == 0.25
    # The window ending at step 30 holds ten 0.5s and ten 1.0s: mean 0.75, the first to reach it.
    assert figures["steps_to_threshold"] == 30.0 and figures["steps_per_s"] == 2.0
    assert run_figures(rows, threshold=2.0)["steps_to_threshold"] is None


def test_across_seeds_gives_the_t_interval():
    stats = across_seeds([1.0, 2.0, 3.0])
    assert stats["mean"] == 2.0 and stats["std"] == 1.0
    assert math.isclose(stats["ci95_high"] - 2.0, 4.303 / math.sqrt(3))  # t(0.975, 2) = 4.303
    assert across_seeds([5.0]) == {"n": 1, "mean": 5.0, "std": None, "ci95_low": None, "ci95_high": None}
    assert across_seeds([])["mean"] is None


def test_summary_markdown_has_a_row_per_condition():
    summary = {"campaign": "c", "window": 20, "reward_threshold": 0.9, "conditions": {
        "grpo+none": {"runs": {"a": {}, "b": {}}, "final_reward": across_seeds([0.8, 0.84]),
                      "best_reward": across_seeds([0.85, 0.86]), "correct_rate": across_seeds([0.8, 0.8]),
                      "steps_to_threshold": across_seeds([]), "reached_threshold": "0/2",
                      "steps_per_s": across_seeds([20.0, 22.0])}}}
    text = summary_markdown(summary)
    assert "| grpo+none | 2 | 0.820 ± 0.028" in text and "| — | 0/2 |" in text
