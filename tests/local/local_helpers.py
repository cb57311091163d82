"""Helpers shared by the local backend tests: configs, prompts and a minimal GRPO step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from retrain.backends.local_trainer import LocalTrainer
from retrain.config.schema import (
    BackendConfig,
    Config,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
)
from retrain.data.arithmetic import ArithmeticSource
from retrain.engines.pytorch import PyTorchEngine
from retrain.types import Example, SampleBatch, TrainBatch


class LocalPair:
    """The local backend's trainer and an in-process engine attached to it, as a run
    builds them; attributes not found here are the trainer's."""

    def __init__(self, config: Config) -> None:
        self.trainer = LocalTrainer(config)
        self.engine = PyTorchEngine(config)
        self.sync()

    def sync(self) -> int:
        """Publish the trainer's weights to the engine (what a run does after each update)."""
        self.engine.load(self.trainer.publish("in_process", Path(".")))
        return self.engine.policy_version

    def __getattr__(self, name: str) -> object:
        return getattr(self.trainer, name)


def local_pair(config: Config) -> LocalPair:
    return LocalPair(config)


def local_config(
    model_dir: Path | str,
    *,
    lora_rank: int = 0,
    devices: str = "cpu",
    seed: int = 0,
    lr: float = 1e-3,
    prefix_caching: bool = True,
    options: dict | None = None,
    **sections: object,
) -> Config:
    """A config for the local backend on ``model_dir``; ``sections`` replace whole sections."""
    config = Config(
        backend=BackendConfig(backend="local", devices=devices, options=dict(options or {})),
        model=ModelConfig(model=str(model_dir), lora_rank=lora_rank),
        training=TrainingConfig(seed=seed, lr=lr, temperature=1.0, max_tokens=4),
        inference=InferenceConfig(prefix_caching=prefix_caching),
    )
    return dataclasses.replace(config, **sections)


def encode_prompts(backend: LocalPair, examples: list[Example]) -> list[list[int]]:
    """Chat-templated token ids of each example's messages, as a run encodes them."""
    return [backend.encode_prompt(example.messages) for example in examples]


def arithmetic_examples(count: int, seed: int = 0) -> list[Example]:
    examples = ArithmeticSource(Config(training=TrainingConfig(seed=seed))).examples()
    return examples[:count]


def grpo_train_batch(samples: SampleBatch, rewards_N: np.ndarray, temperature: float) -> TrainBatch:
    """Every completion with its GRPO advantage r - mean(group r) on every token."""
    group = samples.group_size
    rewards_P_G = rewards_N.reshape(-1, group)
    advantages_N = (rewards_P_G - rewards_P_G.mean(axis=1, keepdims=True)).reshape(-1)
    token_advantages = np.where(samples.mask_N_T, advantages_N[:, None], 0.0).astype(np.float32)
    return TrainBatch(
        prompt_token_ids=samples.prompt_token_ids,
        token_ids_N_T=samples.token_ids_N_T,
        mask_N_T=samples.mask_N_T,
        loss_mask_N_T=samples.loss_mask_N_T,
        sampler_logprobs_N_T=samples.logprobs_N_T,
        token_advantages_N_T=token_advantages,
        prompt_index_N=np.repeat(np.arange(samples.num_prompts), group),
        temperature=temperature,
    )


def match_rewards(samples: SampleBatch, examples: list[Example]) -> np.ndarray:
    """1.0 where the stripped completion equals the reference, else 0.0."""
    group = samples.group_size
    return np.array([float(text.strip() == examples[row // group].reference) for row, text in enumerate(samples.texts)])


def random_train_batch(rng: np.random.Generator, prompts: list[list[int]], group: int, width: int,
                       vocab: int, eos: int) -> TrainBatch:
    """A batch of random completions (right-padded, some ending early) with random advantages."""
    rows = len(prompts) * group
    tokens = rng.integers(4, vocab, size=(rows, width))
    lengths = rng.integers(1, width + 1, size=rows)
    mask = np.arange(width)[None, :] < lengths[:, None]
    tokens[np.arange(rows), lengths - 1] = eos
    tokens[~mask] = 0
    return TrainBatch(
        prompt_token_ids=prompts,
        token_ids_N_T=tokens,
        mask_N_T=mask,
        loss_mask_N_T=mask,
        sampler_logprobs_N_T=np.where(mask, rng.normal(-2.0, 0.5, size=(rows, width)), 0.0).astype(np.float32),
        token_advantages_N_T=np.where(mask, rng.normal(size=(rows, width)), 0.0).astype(np.float32),
        prompt_index_N=np.repeat(np.arange(len(prompts)), group),
        temperature=0.8,
    )
