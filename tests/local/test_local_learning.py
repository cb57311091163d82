"""The tiny model learns the arithmetic task from rewards alone, within minutes on a CPU.

A deliberately plain RL loop around the real engine and backend: 8 prompts x 16 samples,
at most 4 new tokens, temperature 1.0, reward 1 for an exact answer, GRPO advantages
r - mean(r) per group on every token, the backend's loss and AdamW, from a tiny model
built from scratch.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
from local_helpers import encode_prompts, grpo_train_batch, local_config, local_pair, match_rewards

from retrain.data.arithmetic import ArithmeticSource
from retrain.models.tiny import ensure_tiny_model
from retrain.types import SamplingParams

# The embedded default's recipe: full fine-tuning (LoRA on a model this small collapses
# onto one answer or learns far more slowly) and AdamW at 3e-4; at 4e-4 and above some
# seeds collapse onto a single answer for every prompt, after which no group carries signal.
LORA_RANK = 0
LEARNING_RATE = 3e-4
# A step budget, not a time limit: the 5-minute wall-clock target is measured by
# tests/bench/bench_default_run.py, and a clock here would fail on a busy machine.
MAX_STEPS = 1500
WINDOW = 20


@pytest.mark.slow
def test_tiny_model_learns_modular_addition(tmp_path: Path) -> None:
    start = time.monotonic()
    model_dir = ensure_tiny_model(tmp_path)
    config = local_config(model_dir, lora_rank=LORA_RANK, lr=LEARNING_RATE, seed=0)
    backend = local_pair(config)
    examples = ArithmeticSource(config).examples()
    prompts = dict(zip((e.example_id for e in examples), encode_prompts(backend, examples), strict=True))
    order = random.Random(0)
    rewards_per_step: list[float] = []
    while len(rewards_per_step) < MAX_STEPS:
        chosen = order.sample(examples, 8)
        samples = backend.engine.generate([prompts[e.example_id] for e in chosen],
                                          SamplingParams(n=16, max_tokens=4, temperature=1.0))
        rewards = match_rewards(samples, chosen)
        backend.train_step(grpo_train_batch(samples, rewards, temperature=1.0))
        backend.sync()
        rewards_per_step.append(float(rewards.mean()))
        if len(rewards_per_step) >= WINDOW and np.mean(rewards_per_step[-WINDOW:]) >= 0.8:
            break
    elapsed = time.monotonic() - start
    assert np.mean(rewards_per_step[:WINDOW]) <= 0.2
    assert np.mean(rewards_per_step[-WINDOW:]) >= 0.8, (
        f"mean reward {np.mean(rewards_per_step[-WINDOW:]):.2f} after {len(rewards_per_step)} steps, {elapsed:.0f} s"
    )
