"""Three real steps of the tiny model through the real command line.

``retrain --max-steps 3`` in a folder holding the repository's ``retrain.toml`` (full
fine-tuning, ``lora_rank = 0``), and once more with ``--lora-rank 4``. The runs are
shared by the tests of this module; each test checks one property of what they left.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest
from cli_runs import (
    DEFAULT_LOG_DIR,
    LOGS_DOC,
    describe,
    load_weights,
    read_jsonl_strict,
    run_retrain,
    workdir_with_default_config,
)

STEPS = 3
LORA_RANK = 4

# Fields every metrics row of a step that made an update must carry (docs/logs.md).
REQUIRED_FIELDS = (
    "step", "reward_mean", "reward_std", "reward_min", "reward_max", "correct_rate", "prompts", "completions",
    "groups_total", "groups_informative", "groups_dropped", "completion_tokens", "completion_len_mean",
    "completion_len_max", "truncated_rate", "advantage_mean", "advantage_std", "token_advantage_mean",
    "token_advantage_std", "uncertainty_mean", "loss", "skipped", "skipped_updates", "grad_norm", "ratio_mean",
    "trained_tokens", "policy_version", "policy_staleness", "sampled_tokens", "collect_time_s", "sample_time_s",
    "credit_time_s", "train_time_s", "step_time_s", "overhead_frac", "tokens_per_s", "peak_rss_mb",
)


class FinishedRun:
    def __init__(self, workdir: Path, result: subprocess.CompletedProcess[str]) -> None:
        self.workdir = workdir
        self.result = result
        self.log_dir = workdir / DEFAULT_LOG_DIR
        self.adapter = self.log_dir / "adapter" / "final"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, retrain_cache: Path) -> FinishedRun:
    workdir = workdir_with_default_config(tmp_path_factory.mktemp("full"))
    result = run_retrain(workdir, retrain_cache, "--max-steps", str(STEPS))
    assert result.returncode == 0, describe(result)
    return FinishedRun(workdir, result)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, retrain_cache: Path) -> FinishedRun:
    workdir = workdir_with_default_config(tmp_path_factory.mktemp("lora"))
    # save_every 1 keeps the adapter after step 1, which shows the LoRA initialization.
    # --hicra-alpha has no effect with the default transform "gtpo_sepa": the run warns.
    result = run_retrain(workdir, retrain_cache, "--max-steps", str(STEPS), "--lora-rank", str(LORA_RANK),
                         "--save-every", "1", "--hicra-alpha", "0.5")
    assert result.returncode == 0, describe(result)
    return FinishedRun(workdir, result)


def test_the_run_ends_by_naming_adapter_logs_and_metrics(full_run: FinishedRun) -> None:
    lines = full_run.result.stdout.strip().splitlines()
    assert lines[0].startswith(f"finished {STEPS} steps: reward_mean ")
    named = dict(line.strip().split(":", 1) for line in lines[1:])
    assert Path(named["adapter"].strip()) == DEFAULT_LOG_DIR / "adapter" / "final"
    assert Path(named["logs"].strip()) == DEFAULT_LOG_DIR
    assert Path(named["metrics"].strip()) == DEFAULT_LOG_DIR / "metrics.jsonl"
    for name in ("adapter", "logs", "metrics"):
        assert (full_run.workdir / named[name].strip()).exists()


def test_settings_without_effect_are_named_before_training(lora_run: FinishedRun) -> None:
    assert ("retrain: warning: CLI --hicra-alpha [hicra].alpha: has no effect: transform \"gtpo_sepa\" has no HICRA stage"
            in lora_run.result.stderr)


def test_full_finetuning_changes_every_weight_and_saves_a_loadable_model(
        full_run: FinishedRun, tiny_model_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    initial = load_weights(tiny_model_path)
    trained = load_weights(full_run.adapter)
    assert sorted(trained) == sorted(initial)
    unchanged = [name for name in initial if torch.equal(initial[name], trained[name])]
    assert unchanged == []
    model = AutoModelForCausalLM.from_pretrained(full_run.adapter)
    loaded = dict(model.named_parameters())
    # Every parameter of the model is trainable under full fine-tuning, and every one of
    # them comes back from the saved folder (the output head is tied to the embedding).
    for name, parameter in loaded.items():
        key = "model.embed_tokens.weight" if name == "lm_head.weight" else name
        assert torch.equal(parameter.detach(), trained[key]), name


def test_metrics_has_one_complete_row_per_step(full_run: FinishedRun) -> None:
    rows = read_jsonl_strict(full_run.log_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    for row in rows:
        missing = [name for name in REQUIRED_FIELDS if name not in row]
        assert missing == [], f"step {row['step']} lacks {missing}"
        assert row["skipped"] == 0 and row["policy_version"] == row["step"]
        # The default config: 8 prompts x 16 completions, at most 4 new tokens each.
        assert (row["prompts"], row["completions"], row["groups_total"]) == (8, 128, 8)
        assert row["groups_informative"] + row["groups_dropped"] == 8
        assert 0.0 <= row["reward_mean"] <= 1.0 and row["completion_len_max"] <= 4
        # On-policy: the trainer's ratio to the sampler is 1 up to float rounding.
        assert abs(row["ratio_mean"] - 1.0) < 1e-4
        assert 0 < row["peak_rss_mb"] < 1536
        for name, value in row.items():
            if isinstance(value, float):
                assert math.isfinite(value), f"step {row['step']}: {name} = {value}"


def _documented_fields() -> tuple[set[str], list[str]]:
    """Names in the tables of docs/logs.md's metrics section, and its ``*_suffix`` patterns."""
    text = LOGS_DOC.read_text()
    section = text[text.index("## metrics.jsonl"):text.index("## generations.jsonl")]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z0-9_*/]+)`", line.split("|")[1]))
    patterns = [name[1:] for name in names if name.startswith("*")]
    return {name for name in names if not name.startswith("*")}, patterns


def test_every_metrics_field_is_documented(full_run: FinishedRun) -> None:
    names, suffixes = _documented_fields()
    fields = set().union(*(row.keys() for row in read_jsonl_strict(full_run.log_dir / "metrics.jsonl")))
    # A backend metric whose name the row already uses is logged as "train/<name>".
    undocumented = sorted(field for field in fields if field.removeprefix("train/") not in names
                          and not field.endswith(tuple(suffixes)))
    assert undocumented == []


def test_generations_log_has_a_bounded_sample_per_step(full_run: FinishedRun) -> None:
    rows = read_jsonl_strict(full_run.log_dir / "generations.jsonl")
    per_step = {step: [row for row in rows if row["step"] == step] for step in range(1, STEPS + 1)}
    # [logging] generations_per_step defaults to 4, spread over the 128 completions.
    assert [len(group) for group in per_step.values()] == [4] * STEPS
    assert [row["index"] for row in per_step[1]] == [0, 42, 85, 127]
    for row in rows:
        assert row["reward"] == float(row["completion"].strip() == row["reference"])


def test_the_config_snapshot_loads_back_and_explain_accepts_it(full_run: FinishedRun, retrain_cache: Path) -> None:
    from retrain.config.loader import load_config

    snapshot = full_run.log_dir / "config.toml"
    config = load_config(snapshot, environ={})
    original = load_config(full_run.workdir / "retrain.toml", environ={})
    assert config.training.max_steps == STEPS
    assert config.training.seed == original.training.seed == 0
    assert config.model == original.model and config.data == original.data and config.algorithm == original.algorithm
    explained = run_retrain(full_run.workdir, retrain_cache, "explain", str(snapshot.relative_to(full_run.workdir)),
                            "--log-dir", "logs/reproduced")
    assert explained.returncode == 0, describe(explained)
    # As is, the snapshot names the run's own folder, which a new run would refuse.
    same_folder = run_retrain(full_run.workdir, retrain_cache, "explain", str(snapshot.relative_to(full_run.workdir)))
    assert same_folder.returncode == 2 and "already holds a run" in same_folder.stderr, describe(same_folder)


def test_trainer_state_points_at_the_last_checkpoint(full_run: FinishedRun) -> None:
    import json

    state = json.loads((full_run.log_dir / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["seed"] == 0
    assert (full_run.log_dir / state["checkpoint"]).is_dir()
    assert [path.name for path in (full_run.log_dir / "checkpoints").iterdir()] == [f"step_{STEPS}"]
    # 3 steps of 8 prompts each from the shuffled 100 arithmetic problems.
    assert state["data"] == {"epoch": 0, "position": 24, "num_examples": 100}


def test_lora_run_trains_every_lora_matrix_and_saves_a_peft_adapter(lora_run: FinishedRun, tiny_model_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    after_step_1 = load_weights(lora_run.log_dir / "adapter" / "checkpoint_step_1")
    final = load_weights(lora_run.adapter)
    lora_a = sorted(name for name in final if ".lora_A." in name)
    lora_b = sorted(name for name in final if ".lora_B." in name)
    # Qwen3's 7 projections (q, k, v, o, gate, up, down) in each of the 2 layers.
    assert len(lora_a) == len(lora_b) == 14 and len(final) == 28
    initial_a = initial_lora_a(tiny_model_path)
    for name in lora_a:
        # B starts at zero, so A gets no gradient in step 1 (dL/dA = B^T (...) = 0) and
        # Adam moves it by exactly 0: after step 1 it still is its random initialization.
        assert torch.equal(after_step_1[name], initial_a[name]), name
        assert not torch.equal(final[name], initial_a[name]), name
    for name in lora_b:
        assert torch.count_nonzero(after_step_1[name]) > 0, name
        assert not torch.equal(final[name], after_step_1[name]), name
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model = PeftModel.from_pretrained(base, lora_run.adapter)
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            key = name.replace(".default", "")
            assert torch.equal(parameter.detach(), final[key]), name


def initial_lora_a(tiny_model_path: Path) -> dict[str, object]:
    """The LoRA A matrices a run with seed 0 and rank 4 starts from, rebuilt with peft
    under the same seed (B matrices start at zero)."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from retrain.backends.local_trainer import LORA_TARGETS

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_peft_model(base, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules=LORA_TARGETS,
                                                task_type="CAUSAL_LM"))
    return {name: tensor for name, tensor in get_peft_model_state_dict(model).items() if ".lora_A." in name}
