"""Backpressure inside real runs (through the CLI): each step's decision is the batch size
of the next step not yet sampled, the prompt stream advances by exactly the prompts each
step used, the controller's state goes into the checkpoint and a resumed run continues it;
sampling ahead fixes a step's size when it is sampled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runs import describe, read_jsonl_strict, run_retrain

from retrain.sampling import BatchSizes

CONFIG = """
[backend]
devices = "cpu"
adapter_path = "{{log_dir}}/adapter"
[model]
model = "{model}"
lora_rank = 0
[training]
seed = 0
max_steps = 6
batch_size = 4
group_size = 4
max_tokens = 4
save_every = 1
max_staleness = {staleness}
[data]
source = "arithmetic"
shuffle = false
[backpressure]
enabled = true
warmup_steps = 3
min_batch_size = 1
max_batch_size = 8
"""


def write(tmp_path: Path, model: Path, staleness: int = 0) -> Path:
    path = tmp_path / "bp.toml"
    path.write_text(CONFIG.format(model=model, staleness=staleness))
    return path


def test_batch_sizes_fix_a_step_when_it_is_first_sampled():
    sizes = BatchSizes(4)
    assert sizes.for_step(1) == 4 and sizes.for_step(2) == 4
    sizes.change(8, after_step=1)
    assert sizes.for_step(2) == 4 and sizes.for_step(3) == 8  # step 2 was sampled already
    restored = BatchSizes(1)
    restored.load_state_dict(json.loads(json.dumps(sizes.state_dict())))
    assert restored.for_step(2) == 4 and restored.for_step(4) == 8
    with pytest.raises(TypeError):
        restored.load_state_dict({"next": "8", "fixed": {}})


@pytest.mark.slow
def test_each_decision_sizes_the_next_step_and_resume_continues_it(retrain_cache, tiny_model_path, tmp_path):
    config = write(tmp_path, tiny_model_path)
    first = run_retrain(tmp_path, retrain_cache, str(config), "--max-steps", "3", "--log-dir", "bp")
    assert first.returncode == 0, describe(first)
    state = json.loads((tmp_path / "bp" / "trainer_state.json").read_text())
    assert set(state["observers"]) == {"agreement", "backpressure"}
    resumed = run_retrain(tmp_path, retrain_cache, "--resume", "bp", "--max-steps", "6")
    assert resumed.returncode == 0, describe(resumed)
    rows = read_jsonl_strict(tmp_path / "bp" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert [row["bp_action"] for row in rows[:2]] == ["warmup"] * 2 and rows[2]["bp_action"] != "warmup"
    assert {"bp_regime", "bp_p_star", "bp_sigma", "bp_kappa", "bp_utilization", "bp_throughput"} <= set(rows[0])
    assert rows[0]["prompts"] == 4
    for before, after in zip(rows, rows[1:]):
        assert after["prompts"] == before["bp_batch_size"]  # across the resume too
        assert 1 <= after["prompts"] <= 8
    state = json.loads((tmp_path / "bp" / "trainer_state.json").read_text())
    assert state["data"]["position"] == sum(row["prompts"] for row in rows)  # no prompt skipped or repeated
    assert state["observers"]["backpressure"]["controller"]["batch_size"] == rows[-1]["bp_batch_size"]


@pytest.mark.slow
def test_sampling_ahead_uses_the_size_decided_before_the_step_was_sampled(retrain_cache, tiny_model_path, tmp_path):
    config = write(tmp_path, tiny_model_path, staleness=1)
    result = run_retrain(tmp_path, retrain_cache, str(config), "--log-dir", "ahead")
    assert result.returncode == 0, describe(result)
    rows = read_jsonl_strict(tmp_path / "ahead" / "metrics.jsonl")
    assert [row["prompts"] for row in rows[:2]] == [4, 4]  # step 2 is sampled while step 1 trains
    for earlier, later in zip(rows, rows[2:]):
        assert later["prompts"] == earlier["bp_batch_size"]
    state = json.loads((tmp_path / "ahead" / "trainer_state.json").read_text())
    assert state["data"]["position"] == sum(row["prompts"] for row in rows)
