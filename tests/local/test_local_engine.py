"""The in-process PyTorch engine: batched sampling, logprob consistency with the trainer, settings."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from local_helpers import (
    LocalPair,
    arithmetic_examples,
    encode_prompts,
    local_config,
    local_pair,
)

from retrain.backends.loss import sequence_logprobs
from retrain.config.schema import Config, InferenceConfig
from retrain.engines.pytorch import PyTorchEngine, inference_issues
from retrain.engines.sampler import left_pad
from retrain.engines.spans import SpanDecoder
from retrain.errors import ConfigError, EngineError
from retrain.types import Engine, PolicyRef, SamplingParams


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> LocalPair:
    return local_pair(local_config(tiny_model_dir))


def mixed_prompts(tokenizer) -> list[list[int]]:
    """Prompts of different lengths, so the batch is left-padded."""
    texts = ["7+8 mod 10=", "Hi", "Let me check: 2+2 mod 10=", "x"]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def trainer_logprobs(backend: LocalPair, samples, temperature: float) -> np.ndarray:
    prompt_ids, prompt_mask = left_pad(samples.prompt_token_ids, backend.pad_id, torch.device("cpu"))
    index = torch.arange(samples.num_prompts).repeat_interleave(samples.group_size)
    with torch.no_grad():
        logp = sequence_logprobs(backend.model, prompt_ids, prompt_mask, index, torch.tensor(samples.token_ids_N_T),
                                 torch.tensor(samples.mask_N_T), temperature)
    return logp.numpy()


def test_engine_follows_the_protocol_and_needs_an_in_process_policy(backend: LocalPair) -> None:
    assert isinstance(backend.engine, Engine)
    capabilities = PyTorchEngine.capabilities(Config())
    assert capabilities.loads == ("in_process",) and capabilities.entropies and capabilities.exact_resume
    fresh = PyTorchEngine(local_config("unused"))
    with pytest.raises(EngineError, match="load a published policy before sampling"):
        fresh.generate([[1]], SamplingParams(n=1, max_tokens=1))
    with pytest.raises(EngineError, match="given a lora_adapter reference"):
        fresh.load(PolicyRef(1, "lora_adapter", location="/tmp/x"))


def test_batch_shapes_finish_reasons_and_texts(backend: LocalPair) -> None:
    engine = backend.engine
    prompts = encode_prompts(backend, arithmetic_examples(3))
    samples = engine.generate(prompts, SamplingParams(n=5, max_tokens=6, temperature=1.0, top_p=1.0))
    n_rows = 15
    assert samples.group_size == 5 and samples.num_prompts == 3
    assert samples.token_ids_N_T.shape == samples.mask_N_T.shape == samples.logprobs_N_T.shape
    assert samples.token_ids_N_T.shape[0] == n_rows
    assert samples.logprobs_N_T.dtype == np.float32
    assert samples.entropies_N_T is None
    eos = backend.tokenizer.eos_token_id
    for row in range(n_rows):
        length = samples.lengths_N[row]
        tokens = samples.token_ids_N_T[row, :length]
        # Real tokens come first; padding carries logprob 0.
        assert samples.mask_N_T[row, :length].all() and not samples.mask_N_T[row, length:].any()
        assert (samples.logprobs_N_T[row, length:] == 0).all()
        assert (samples.logprobs_N_T[row, :length] < 0).all()
        if samples.finish_reasons[row] == "stop":
            assert tokens[-1] == eos and eos not in tokens[:-1]
        else:
            assert samples.finish_reasons[row] == "length" and length == 6 and eos not in tokens
        assert samples.texts[row] == backend.tokenizer.decode(tokens, skip_special_tokens=True)
        spans = samples.token_char_spans[row]
        assert len(spans) == length
        assert "".join(samples.texts[row][start:end] for start, end in spans) == samples.texts[row]
    # The warm-started tiny model answers "<digit><|im_end|>".
    assert samples.finish_reasons.count("stop") >= 12


@pytest.mark.parametrize("prefix_caching", [True, False])
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_sampler_logprobs_equal_trainer_logprobs(tiny_model_dir: Path, prefix_caching: bool, lora_rank: int) -> None:
    backend = local_pair(local_config(tiny_model_dir, lora_rank=lora_rank, prefix_caching=prefix_caching))
    if lora_rank:
        # Move LoRA's B away from zero so the adapter actually changes the logits.
        with torch.no_grad():
            for name, param in backend.model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)
    samples = backend.engine.generate(mixed_prompts(backend.tokenizer), SamplingParams(n=4, max_tokens=10, temperature=0.7, top_p=1.0))
    trained = trainer_logprobs(backend, samples, 0.7)
    difference = np.abs(np.where(samples.mask_N_T, trained - samples.logprobs_N_T, 0.0)).max()
    assert difference <= 1e-4


def test_entropies_are_the_tempered_distribution_entropy(backend: LocalPair) -> None:
    engine = backend.engine
    prompts = mixed_prompts(backend.tokenizer)[:2]
    samples = engine.generate(prompts, SamplingParams(n=2, max_tokens=3, temperature=0.8, top_p=1.0, want_entropies=True))
    # Recompute the first token's distribution of each prompt directly.
    for p, prompt in enumerate(prompts):
        with torch.no_grad():
            logits = backend.model(torch.tensor([prompt])).logits[0, -1] / 0.8
        probs = logits.softmax(-1)
        entropy = float(-(probs * probs.log()).sum())
        for g in range(2):
            assert samples.entropies_N_T[p * 2 + g, 0] == pytest.approx(entropy, abs=1e-4)
    assert (samples.entropies_N_T[~samples.mask_N_T] == 0).all()


def test_same_seed_same_samples_and_state_restore(backend: LocalPair, tmp_path: Path) -> None:
    engine = backend.engine
    prompts = mixed_prompts(backend.tokenizer)
    engine.save_state(tmp_path)
    first = engine.generate(prompts, SamplingParams(n=3, max_tokens=5, temperature=1.0, top_p=1.0))
    second = engine.generate(prompts, SamplingParams(n=3, max_tokens=5, temperature=1.0, top_p=1.0))
    engine.load_state(tmp_path)
    replay = engine.generate(prompts, SamplingParams(n=3, max_tokens=5, temperature=1.0, top_p=1.0))
    assert np.array_equal(first.token_ids_N_T, replay.token_ids_N_T)
    assert np.array_equal(first.logprobs_N_T, replay.logprobs_N_T)
    assert not np.array_equal(first.token_ids_N_T, second.token_ids_N_T)


def test_prefix_caching_changes_cost_not_samples(tiny_model_dir: Path) -> None:
    shared = local_pair(local_config(tiny_model_dir, prefix_caching=True)).engine
    separate = local_pair(local_config(tiny_model_dir, prefix_caching=False)).engine
    prompts = mixed_prompts(shared.sampler.tokenizer)
    a = shared.generate(prompts, SamplingParams(n=4, max_tokens=6, temperature=1.0, top_p=1.0))
    b = separate.generate(prompts, SamplingParams(n=4, max_tokens=6, temperature=1.0, top_p=1.0))
    assert np.array_equal(a.token_ids_N_T, b.token_ids_N_T)
    assert np.abs(a.logprobs_N_T - b.logprobs_N_T).max() <= 1e-5


def test_tiny_top_p_is_greedy(backend: LocalPair) -> None:
    engine = backend.engine
    prompts = mixed_prompts(backend.tokenizer)
    samples = engine.generate(prompts, SamplingParams(n=3, max_tokens=1, temperature=1.0, top_p=1e-6))
    with torch.no_grad():
        for p, prompt in enumerate(prompts):
            greedy = int(backend.model(torch.tensor([prompt])).logits[0, -1].argmax())
            assert list(samples.token_ids_N_T[p * 3:(p + 1) * 3, 0]) == [greedy] * 3


def test_generation_leaves_the_shared_model_in_training_mode(backend: LocalPair) -> None:
    backend.model.train()
    backend.engine.generate(mixed_prompts(backend.tokenizer)[:1], SamplingParams(n=2, max_tokens=2, temperature=1.0, top_p=1.0))
    assert backend.model.training


def test_span_decoder_handles_characters_split_over_byte_tokens() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(["plain ascii words", "more words here"], trainers.BpeTrainer(vocab_size=300,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    text = "wörds ✓ here"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # The check mark is three UTF-8 bytes: several tokens for one character.
    assert len(ids) > len(text.split())
    spans = SpanDecoder(tokenizer).char_spans(ids, tokenizer.decode(ids))
    assert len(spans) == len(ids)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert text[slice(*spans[-1])].endswith("here")


# ---------------------------------------------------------------------------- settings

def settings_config(devices: str = "cpu", **inference: object) -> Config:
    config = Config()
    return dataclasses.replace(
        config,
        backend=dataclasses.replace(config.backend, devices=devices),
        inference=InferenceConfig(**inference),
    )


def issue_keys(config: Config, flash_installed: bool = False) -> list[str]:
    return [issue.key for issue in inference_issues(config, flash_installed)]


def test_defaults_are_honoured_everywhere() -> None:
    assert issue_keys(settings_config("cpu")) == []
    assert issue_keys(settings_config("gpu:0")) == []
    assert issue_keys(settings_config("cpu,cpu", dtype="bf16", kv_cache_dtype="bf16")) == []
    assert issue_keys(settings_config("gpu:0", attention_kernel="flash", kv_cache_dtype="bf16"), flash_installed=True) == []


def test_settings_the_engine_cannot_honour_are_config_errors() -> None:
    assert issue_keys(settings_config("cpu", attention_kernel="flash"), flash_installed=True) == ["attention_kernel"]
    assert issue_keys(settings_config("gpu:0", attention_kernel="flash"), flash_installed=False) == ["attention_kernel"]
    for kernel in ("triton", "tk", "cutlass"):
        assert issue_keys(settings_config("gpu:0", attention_kernel=kernel)) == ["attention_kernel"]
    assert issue_keys(settings_config("gpu:0", dtype="fp8")) == ["dtype"]
    assert issue_keys(settings_config("gpu:0", dtype="fp4")) == ["dtype"]
    # On one CPU the engine shares the fp32 training weights.
    assert issue_keys(settings_config("cpu", dtype="bf16")) == ["dtype"]
    assert issue_keys(settings_config("cpu", kv_cache_dtype="bf16")) == ["kv_cache_dtype"]
    assert issue_keys(settings_config("gpu:0", kv_cache_dtype="fp8")) == ["kv_cache_dtype"]
    assert issue_keys(settings_config("gpu:0", kv_cache_dtype="int8")) == ["kv_cache_dtype"]


def test_the_engine_reports_settings_it_cannot_honour_as_its_own_config_issues() -> None:
    config = settings_config("cpu", attention_kernel="flash", dtype="fp8")
    assert [issue.key for issue in PyTorchEngine.config_issues(config)] == ["attention_kernel", "dtype"]
    assert [issue.problem for issue in PyTorchEngine.config_issues(settings_config("cpu,cpu,cpu"))] == \
        ["3 devices given; split mode uses two"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when no GPU is present")
def test_asking_for_a_gpu_without_one_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        local_pair(local_config(tmp_path, devices="gpu:0"))
    with pytest.raises(ConfigError, match="no CUDA device"):
        local_pair(local_config(tmp_path, devices="cpu,cuda:1"))


def test_the_cache_argument_follows_the_model_s_own_name_for_it() -> None:
    """Current transformers take and return ``cache``; releases before it ``past_key_values``."""
    from types import SimpleNamespace

    from transformers.cache_utils import DynamicCache

    from retrain.engines.sampler import cache_argument_name, output_cache

    older_cache, current_cache = DynamicCache(), DynamicCache()

    class Older(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=False):  # noqa: ANN001, ANN201
            return SimpleNamespace(past_key_values=older_cache)

    class Current(torch.nn.Module):
        def forward(self, input_ids, cache=None, use_cache=False):  # noqa: ANN001, ANN201
            return SimpleNamespace(cache=current_cache)

    class Legacy(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=False):  # noqa: ANN001, ANN201
            return SimpleNamespace(past_key_values=((torch.zeros(1), torch.zeros(1)),))

    assert cache_argument_name(Older()) == "past_key_values" and cache_argument_name(Current()) == "cache"
    assert output_cache(Older()(None)) is older_cache and output_cache(Current()(None)) is current_cache
    # A tuple-of-tensors cache (the pre-Cache format) cannot be reordered in place: named, not crashed on later.
    with pytest.raises(EngineError, match="returned tuple as its KV cache, not a transformers Cache"):
        output_cache(Legacy()(None))
