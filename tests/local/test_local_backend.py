"""The local backend: updates, skips, micro-batching, adapters and exact save/load of state."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from local_helpers import (
    LocalPair,
    arithmetic_examples,
    encode_prompts,
    grpo_train_batch,
    local_config,
    local_pair,
    match_rewards,
    random_train_batch,
)

from retrain.backends.local import LocalBackend
from retrain.backends.local_trainer import STATE_FILE
from retrain.backends.loss import sequence_logprobs
from retrain.config.schema import OptimizerConfig, TrainingConfig
from retrain.engines.sampler import left_pad
from retrain.errors import BackendError
from retrain.types import Backend, SamplingParams


def batch_for(backend: LocalPair, seed: int = 0, prompts: int = 3, group: int = 4, width: int = 5):
    rng = np.random.default_rng(seed)
    tokenizer = backend.tokenizer
    texts = ["7+8 mod 10=", "Hi there", "x"][:prompts]
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return random_train_batch(rng, prompt_ids, group, width, vocab=len(tokenizer), eos=tokenizer.eos_token_id)


def trainable_copy(backend: LocalPair) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in backend.trainable}


def all_weights(backend: LocalPair) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in backend.model.named_parameters()}


def rl_steps(backend: LocalPair, steps: int, examples) -> list[float]:
    """Sample, score and train ``steps`` times; returns the losses."""
    prompts = encode_prompts(backend, examples)
    losses = []
    for _ in range(steps):
        samples = backend.engine.generate(prompts, SamplingParams(n=4, max_tokens=4, temperature=1.0, top_p=1.0))
        rewards = match_rewards(samples, examples)
        rewards[0] = 1.0 - rewards[0]  # keep every step informative
        result = backend.train_step(grpo_train_batch(samples, rewards, 1.0))
        backend.sync()
        losses.append(result.loss)
    return losses


def test_declares_its_capabilities(tiny_model_dir: Path) -> None:
    config = local_config(tiny_model_dir)
    backend = LocalBackend(config)
    assert isinstance(backend, Backend) and backend.policy_version == 0
    caps = LocalBackend.capabilities(config)
    assert caps.reports_loss and caps.preserves_token_advantages and caps.exact_resume and caps.full_finetuning
    assert caps.publishes == ("in_process", "full_weights")
    assert LocalBackend.capabilities(local_config(tiny_model_dir, lora_rank=4)).publishes == ("in_process", "lora_adapter")
    # Two devices: the first holds the in-process engine's copy.
    assert LocalBackend.capabilities(local_config(tiny_model_dir, devices="cpu,cpu")).publishes == ("in_process",)
    backend.close()
    backend.close()  # closing twice is harmless


def test_publishes_the_live_model_or_a_folder_per_version(tiny_model_dir: Path, tmp_path: Path) -> None:
    backend = LocalBackend(local_config(tiny_model_dir, lora_rank=4))
    live = backend.publish("in_process", tmp_path)
    assert live.version == 0 and live.in_process is not None and live.in_process.model is backend.trainer.model
    backend.train_step(batch_for(backend.trainer))
    folder = backend.publish("lora_adapter", tmp_path)
    assert folder.version == 1 and folder.location == str((tmp_path / "policy_v1").resolve())
    assert (tmp_path / "policy_v1" / "adapter_config.json").is_file()
    with pytest.raises(BackendError, match="cannot publish full_weights with \\[model\\] lora_rank = 4"):
        backend.publish("full_weights", tmp_path)


def test_full_finetuning_updates_every_weight(tiny_model_dir: Path) -> None:
    backend = local_pair(local_config(tiny_model_dir, lora_rank=0))
    before = all_weights(backend)
    result = backend.train_step(batch_for(backend))
    assert not result.skipped and np.isfinite(result.loss)
    after = all_weights(backend)
    assert before.keys() == after.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    assert backend.policy_version == 1 and backend.sync() == 1
    for key in ("loss", "grad_norm", "ratio_mean", "ratio_max", "clip_fraction", "trained_tokens",
                "train_time_s", "peak_memory_mb"):
        assert np.isfinite(result.metrics[key]), key
    assert result.metrics["trained_tokens"] == float(batch_for(backend).loss_mask_N_T.sum())


def test_lora_trains_only_the_adapter(tiny_model_dir: Path) -> None:
    config = local_config(tiny_model_dir, lora_rank=4)
    backend = local_pair(config)
    assert hasattr(backend.model, "peft_config")
    trainable_names = [name for name, _ in backend.trainable]
    assert trainable_names and all("lora_" in name for name in trainable_names)
    # Attention and MLP projections of every layer carry LoRA.
    for projection in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"{projection}.lora_A" in name for name in trainable_names), projection
    assert backend.model.peft_config["default"].lora_alpha == 8  # alpha 0 -> 2 x rank
    before = all_weights(backend)
    backend.train_step(batch_for(backend))
    backend.train_step(batch_for(backend, seed=1))
    after = all_weights(backend)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == (name in trainable_names), name


def test_first_step_on_policy_has_ratio_one(tiny_model_dir: Path) -> None:
    backend = local_pair(local_config(tiny_model_dir))
    examples = arithmetic_examples(4)
    samples = backend.engine.generate(encode_prompts(backend, examples), SamplingParams(n=4, max_tokens=4))
    rewards = np.arange(16) % 2 * 1.0
    result = backend.train_step(grpo_train_batch(samples, rewards, 1.0))
    assert result.metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert result.metrics["ratio_max"] == pytest.approx(1.0, abs=1e-4)


def test_non_finite_loss_skips_the_update(tiny_model_dir: Path) -> None:
    backend = local_pair(local_config(tiny_model_dir))
    batch = batch_for(backend)
    batch.token_advantages_N_T[0, 0] = np.nan
    before = all_weights(backend)
    result = backend.train_step(batch)
    assert result.skipped and not np.isfinite(result.loss)
    assert result.metrics["skipped_updates"] == 1.0 and backend.skipped_updates == 1
    assert backend.policy_version == 0
    after = all_weights(backend)
    assert all(torch.equal(before[name], after[name]) for name in before)
    # The next good batch trains normally.
    assert not backend.train_step(batch_for(backend)).skipped
    assert backend.policy_version == 1


def test_empty_batch_is_skipped_without_touching_weights(tiny_model_dir: Path) -> None:
    backend = local_pair(local_config(tiny_model_dir))
    batch = batch_for(backend)
    batch.mask_N_T[:] = False
    before = all_weights(backend)
    assert backend.train_step(batch).skipped
    assert all(torch.equal(before[name], param) for name, param in all_weights(backend).items())


def test_micro_batches_and_checkpointing_match_the_whole_batch(tiny_model_dir: Path) -> None:
    results = {}
    for label, options in {"whole": {}, "micro": {"micro_batch_size": 5},
                           "checkpointed": {"gradient_checkpointing": True, "micro_batch_size": 7}}.items():
        config = local_config(tiny_model_dir, lr=1.0, options=options)
        # eps = 1 makes AdamW's first step about lr * g (not lr * sign(g)), so the weights
        # reflect the gradients and last-digit differences in tiny gradients stay tiny.
        config = dataclasses.replace(config, optimizer=OptimizerConfig(eps=1.0, grad_clip_norm=0.0))
        backend = local_pair(config)
        result = backend.train_step(batch_for(backend))
        results[label] = (result.loss, result.metrics["grad_norm"], trainable_copy(backend))
    whole_loss, whole_norm, whole_weights = results["whole"]
    for label in ("micro", "checkpointed"):
        loss, norm, weights = results[label]
        assert loss == pytest.approx(whole_loss, abs=1e-6), label
        assert norm == pytest.approx(whole_norm, rel=1e-4), label
        for name in whole_weights:
            assert torch.allclose(weights[name], whole_weights[name], atol=1e-6), (label, name)


def test_shared_prompt_gradients_equal_full_sequence_gradients(tiny_model_dir: Path) -> None:
    backend = local_pair(local_config(tiny_model_dir))
    batch = batch_for(backend, width=6)
    prompt_ids, prompt_mask = left_pad(batch.prompt_token_ids, backend.pad_id, torch.device("cpu"))
    gradients = []
    for share in (True, False):
        backend.model.zero_grad()
        logp = sequence_logprobs(backend.model, prompt_ids, prompt_mask, torch.as_tensor(batch.prompt_index_N),
                                 torch.as_tensor(batch.token_ids_N_T), torch.as_tensor(batch.mask_N_T), 0.8, share)
        (logp * torch.as_tensor(batch.mask_N_T)).sum().backward()
        gradients.append({name: param.grad.clone() for name, param in backend.trainable})
    for name in gradients[0]:
        assert torch.allclose(gradients[0][name], gradients[1][name], rtol=1e-4, atol=1e-5), name


def test_gradient_clipping_changes_the_update(tiny_model_dir: Path) -> None:
    weights = []
    for clip in (0.0, 1e-3):
        config = local_config(tiny_model_dir)
        config = dataclasses.replace(config, optimizer=OptimizerConfig(grad_clip_norm=clip))
        backend = local_pair(config)
        norms = [backend.train_step(batch_for(backend, seed=s)).metrics["grad_norm"] for s in range(2)]
        # The reported norm is the one before clipping.
        assert norms[0] > 1e-3
        weights.append(trainable_copy(backend))
    assert any(not torch.allclose(weights[0][n], weights[1][n]) for n in weights[0])


def test_clipping_settings_reach_the_loss(tiny_model_dir: Path) -> None:
    config = local_config(tiny_model_dir)
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, clip_eps=0.01))
    backend = local_pair(config)
    batch = batch_for(backend)
    # Random sampler logprobs are far from the model's: most ratios leave [0.99, 1.01].
    assert backend.train_step(batch).metrics["clip_fraction"] > 0.2


def test_prompt_index_out_of_range_is_an_error(tiny_model_dir: Path) -> None:
    backend = local_pair(local_config(tiny_model_dir))
    batch = batch_for(backend)
    batch.prompt_index_N[-1] = 7
    with pytest.raises(BackendError, match="prompt_index_N"):
        backend.train_step(batch)


# ---------------------------------------------------------------------------- saving

def test_lora_adapter_is_a_normal_peft_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    backend = local_pair(local_config(tiny_model_dir, lora_rank=4))
    backend.train_step(batch_for(backend))
    backend.train_step(batch_for(backend, seed=1))
    target = tmp_path / "adapter"
    backend.save_adapter(target)
    backend.save_adapter(target)  # replacing an existing checkpoint works too
    assert (target / "adapter_config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), target).eval()
    ids = torch.tensor([backend.tokenizer("7+8 mod 10=")["input_ids"]])
    backend.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, backend.model(ids).logits, atol=1e-5)


def test_full_finetune_saves_a_model_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    backend = local_pair(local_config(tiny_model_dir, lora_rank=0))
    backend.train_step(batch_for(backend))
    backend.save_adapter(tmp_path / "final")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    AutoTokenizer.from_pretrained(tmp_path / "final")
    ids = torch.tensor([backend.tokenizer("7+8 mod 10=")["input_ids"]])
    backend.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, backend.model(ids).logits, atol=1e-5)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_a_published_folder_loads_into_a_copy_of_the_model(tiny_model_dir: Path, tmp_path: Path,
                                                           lora_rank: int) -> None:
    from retrain.backends.weights import load_saved_weights

    trained = local_pair(local_config(tiny_model_dir, lora_rank=lora_rank))
    trained.train_step(batch_for(trained))
    ref = trained.publish("full_weights" if lora_rank == 0 else "lora_adapter", tmp_path)
    fresh = local_pair(local_config(tiny_model_dir, lora_rank=lora_rank))
    load_saved_weights(fresh.model, Path(ref.location))
    for (name, a), (_, b) in zip(trained.trainable, fresh.trainable, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_save_and_load_state_continue_bit_identically(tiny_model_dir: Path, tmp_path: Path, lora_rank: int) -> None:
    config = local_config(tiny_model_dir, lora_rank=lora_rank, lr=3e-3)
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, dropout=0.1 if lora_rank else 0.0))
    examples = arithmetic_examples(3)

    straight = local_pair(config)
    rl_steps(straight, 2, examples)
    straight.save_state(tmp_path)
    straight.engine.save_state(tmp_path / "engine")
    expected_losses = rl_steps(straight, 2, examples)

    resumed = local_pair(config)
    resumed.load_state(tmp_path)
    assert resumed.policy_version == 2 and resumed.sync() == 2
    resumed.engine.load_state(tmp_path / "engine")
    losses = rl_steps(resumed, 2, examples)
    assert losses == expected_losses
    for (name, a), (_, b) in zip(straight.trainable, resumed.trainable, strict=True):
        assert torch.equal(a, b), name
    assert (tmp_path / STATE_FILE).is_file()


def test_load_state_refuses_a_different_model_setup(tiny_model_dir: Path, tmp_path: Path) -> None:
    local_pair(local_config(tiny_model_dir, lora_rank=0)).save_state(tmp_path)
    with pytest.raises(BackendError, match="lora_rank"):
        local_pair(local_config(tiny_model_dir, lora_rank=4)).load_state(tmp_path)
    with pytest.raises(BackendError, match="no local backend state"):
        local_pair(local_config(tiny_model_dir)).load_state(tmp_path / "empty")


def test_training_settings_reach_the_optimizer(tiny_model_dir: Path) -> None:
    config = local_config(tiny_model_dir)
    config = dataclasses.replace(
        config,
        training=TrainingConfig(seed=0, lr=2e-4, weight_decay=0.01),
        optimizer=OptimizerConfig(beta1=0.8, beta2=0.9, eps=1e-6),
    )
    group = local_pair(config).optimizer.param_groups[0]
    assert group["lr"] == 2e-4 and group["weight_decay"] == 0.01
    assert group["betas"] == (0.8, 0.9) and group["eps"] == 1e-6
