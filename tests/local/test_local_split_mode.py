"""Split mode on two CPU devices: the in-process engine's own copy, refreshed at every
load, and sampling in one thread while another trains and publishes."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from local_helpers import (
    LocalPair,
    arithmetic_examples,
    encode_prompts,
    local_config,
    local_pair,
    random_train_batch,
)

from retrain.backends.loss import sequence_logprobs
from retrain.config.schema import InferenceConfig
from retrain.engines.sampler import left_pad
from retrain.types import SamplingParams


def train_batch(backend: LocalPair, seed: int):
    prompts = encode_prompts(backend, arithmetic_examples(2))
    tokenizer = backend.tokenizer
    return random_train_batch(np.random.default_rng(seed), prompts, 3, 3, vocab=len(tokenizer), eos=tokenizer.eos_token_id)


def engine_weights(backend: LocalPair) -> dict[str, torch.Tensor]:
    params = dict(backend.engine.sampler.model.named_parameters())
    return {name: params[name].detach().clone() for name, _ in backend.trainable}


def train_weights(backend: LocalPair) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in backend.trainable}


def test_engine_owns_a_copy_that_changes_only_on_sync(tiny_model_dir: Path) -> None:
    backend = local_pair(local_config(tiny_model_dir, devices="cpu,cpu", lora_rank=4))
    assert backend.engine.own_copy
    assert backend.engine.sampler.model is not backend.model
    assert not any(p.requires_grad for p in backend.engine.sampler.model.parameters())
    start = engine_weights(backend)
    backend.train_step(train_batch(backend, 0))
    backend.train_step(train_batch(backend, 1))
    # Training moved the training copy only.
    assert all(torch.equal(start[n], w) for n, w in engine_weights(backend).items())
    assert any(not torch.equal(start[n], w) for n, w in train_weights(backend).items())
    assert backend.sync() == 2
    trained = train_weights(backend)
    assert all(torch.equal(trained[n], w) for n, w in engine_weights(backend).items())
    assert backend.engine.policy_version == 2


def test_bf16_sampling_copy_in_split_mode(tiny_model_dir: Path) -> None:
    config = local_config(tiny_model_dir, devices="cpu,cpu")
    config = dataclasses.replace(config, inference=InferenceConfig(dtype="bf16", kv_cache_dtype="bf16"))
    backend = local_pair(config)
    assert next(backend.engine.sampler.model.parameters()).dtype == torch.bfloat16
    assert next(backend.model.parameters()).dtype == torch.float32
    prompts = encode_prompts(backend, arithmetic_examples(2))
    samples = backend.engine.generate(prompts, SamplingParams(n=2, max_tokens=3, temperature=1.0, top_p=1.0))
    assert samples.mask_N_T.any(axis=1).all()


def test_sampling_and_training_overlap_without_torn_weights(tiny_model_dir: Path) -> None:
    """One thread samples while another trains and syncs; every batch must match exactly the
    weights of the policy version it reports, so no generation saw a half-copied state."""
    backend = local_pair(local_config(tiny_model_dir, devices="cpu,cpu", lora_rank=0, lr=5e-3))
    prompts = encode_prompts(backend, arithmetic_examples(4))
    snapshots = {0: train_weights(backend)}
    batches = []

    def sample() -> None:
        for _ in range(8):
            batches.append(backend.engine.generate(prompts, SamplingParams(n=4, max_tokens=4, temperature=1.0, top_p=1.0)))

    def train() -> None:
        for step in range(8):
            backend.train_step(train_batch(backend, step))
            version = backend.sync()
            snapshots[version] = train_weights(backend)

    with ThreadPoolExecutor(max_workers=2) as pool:
        running = [pool.submit(sample), pool.submit(train)]
        for future in running:
            future.result(timeout=300)  # re-raises whatever failed in the thread
    assert len(batches) == 8 and len(snapshots) == 9
    versions = [batch.policy_version for batch in batches]
    assert versions == sorted(versions)

    pad = backend.pad_id
    for batch in batches:
        with torch.no_grad():
            for name, param in backend.trainable:
                param.copy_(snapshots[batch.policy_version][name])
            prompt_ids, prompt_mask = left_pad(batch.prompt_token_ids, pad, torch.device("cpu"))
            logp = sequence_logprobs(backend.model.eval(), prompt_ids, prompt_mask,
                                     torch.arange(batch.num_prompts).repeat_interleave(batch.group_size),
                                     torch.as_tensor(batch.token_ids_N_T), torch.as_tensor(batch.mask_N_T), 1.0)
        difference = np.abs(np.where(batch.mask_N_T, logp.numpy() - batch.logprobs_N_T, 0.0)).max()
        assert difference <= 1e-4, (batch.policy_version, difference)
