"""Batched sampling from a Hugging Face causal LM held in this process (torch side of the
in-process engine, ``retrain.engines.pytorch``).

One ``generate`` call samples ``n`` completions for each of ``P`` prompts in a single
batch of ``N = P * n`` rows:

1. Prefill. The prompts are left-padded into one ``[P, L]`` batch and run once. With
   ``prefix_caching`` each prompt's KV cache is computed once and repeated for its ``n``
   completions; without it the ``N`` rows are prefilled separately.
2. Decode. Each step draws one token per row from ``softmax(logits / temperature)``
   (restricted to the top-p nucleus when ``top_p < 1``), records its log-probability
   ``log softmax(logits / temperature)[token]`` under the full temperature-scaled
   distribution (what the trainer recomputes, so the importance ratio is exactly 1
   on-policy) and, when asked, the Shannon entropy ``-sum_v p(v) log p(v)`` of that
   distribution. A row stops at an end-of-sequence token ("stop") or after
   ``max_tokens`` tokens ("length").
3. Finished rows are dropped from the batch (their KV cache rows with them) once enough
   of them have finished to pay for the copy, so they stop costing compute.

Sampling draws only from the sampler's own ``torch.Generator``: with the same seed,
weights and prompts it returns the same completions. ``weights_lock`` is held for the
whole of a ``generate`` call, and by whoever changes the weights, so a generation never
sees half-updated weights.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
import pickle
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers.cache_utils import Cache

from retrain.engines.spans import SpanDecoder
from retrain.errors import EngineError
from retrain.types import InProcessPolicy, SampleBatch, SamplingParams

logger = logging.getLogger(__name__)

# Dropping finished rows copies the whole KV cache; do it once at least this fraction of
# the current batch has finished (and always when every row has).
COMPACT_FRACTION = 0.125


class Sampler:
    """Samples from a Hugging Face causal LM held in this process.

    ``model`` is the (possibly PEFT-wrapped) causal LM; ``weights_lock`` is held for the
    whole of each ``generate`` call, and by whoever changes the weights.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,  # transformers.PreTrainedTokenizerBase
        *,
        device: torch.device | str,
        generator: torch.Generator,
        prefix_caching: bool = True,
        weights_lock: threading.Lock | None = None,
        eos_ids: Sequence[int] | None = None,
        live_version: Callable[[], int] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.generator = generator
        self.prefix_caching = prefix_caching
        self.weights_lock = weights_lock if weights_lock is not None else threading.Lock()
        self.eos_token_ids = sorted(set(eos_ids if eos_ids is not None else eos_token_ids(model, tokenizer)))
        if not self.eos_token_ids:
            raise EngineError("the tokenizer and model define no end-of-sequence token; sampling could never stop")
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])
        # Sharing the trainer's weights, a sample is of whatever version they hold when it
        # starts (read under the shared lock); an own copy has the version last copied in.
        self.live_version = live_version
        self.policy_version = 0
        self.spans = SpanDecoder(tokenizer)
        self._cache_name = cache_argument_name(model)

    # ----------------------------------------------------------------------------- RNG

    def rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    # ------------------------------------------------------------------------ sampling

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> SampleBatch:
        if not prompt_token_ids or any(len(ids) == 0 for ids in prompt_token_ids):
            raise EngineError("generate needs at least one prompt, and every prompt needs at least one token")
        n, max_tokens, temperature, top_p = params.n, params.max_tokens, params.temperature, params.top_p
        if n < 1 or max_tokens < 1 or temperature <= 0 or not 0 < top_p <= 1:
            raise EngineError(
                f"invalid sampling request: n={n}, max_tokens={max_tokens}, temperature={temperature}, top_p={top_p}"
            )
        with self.weights_lock, _eval_mode(self.model), torch.inference_mode():
            version = self.live_version() if self.live_version is not None else self.policy_version
            tokens, logprobs, entropies, lengths, stopped = self._sample(
                prompt_token_ids, n, max_tokens, temperature, top_p, params.want_entropies
            )
        return self._package(prompt_token_ids, n, tokens, logprobs, entropies, lengths, stopped, version)

    def _prefill(self, prompts: list[list[int]], n: int):
        """Run the prompts once; return the KV cache, next-token logits, attention mask and
        next position for each of the ``len(prompts) * n`` rows, and whether a mask is needed."""
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_token_id, self.device)
        if not self.prefix_caching:
            prompt_ids = prompt_ids.repeat_interleave(n, dim=0)
            prompt_mask = prompt_mask.repeat_interleave(n, dim=0)
        # Without left padding the causal mask alone is exact, and attention skips building
        # an explicit mask (new tokens are appended to every row alike).
        needs_mask = not bool(prompt_mask.all())
        out = self.model(
            input_ids=prompt_ids,
            attention_mask=prompt_mask if needs_mask else None,
            position_ids=(prompt_mask.cumsum(dim=1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )
        cache, last_logits, attention = output_cache(out), out.logits[:, -1], prompt_mask
        next_position = prompt_mask.sum(dim=1)
        if self.prefix_caching and n > 1:
            cache.batch_repeat_interleave(n)
            last_logits = last_logits.repeat_interleave(n, dim=0)
            attention = attention.repeat_interleave(n, dim=0)
            next_position = next_position.repeat_interleave(n)
        return cache, last_logits, attention, next_position, needs_mask

    def _sample(
        self,
        prompts: list[list[int]],
        n: int,
        max_tokens: int,
        temperature: float,
        top_p: float,
        want_entropies: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        device = self.device
        num_rows = len(prompts) * n
        cache, last_logits, attention, next_position, needs_mask = self._prefill(prompts, n)
        tokens_out = torch.full((num_rows, max_tokens), self.pad_token_id, dtype=torch.long, device=device)
        logprobs_out = torch.zeros((num_rows, max_tokens), dtype=torch.float32, device=device)
        entropies_out = torch.zeros((num_rows, max_tokens), dtype=torch.float32, device=device) if want_entropies else None
        lengths = torch.full((num_rows,), max_tokens, dtype=torch.long, device=device)
        stopped = torch.zeros(num_rows, dtype=torch.bool, device=device)
        eos_ids = torch.tensor(self.eos_token_ids, device=device)

        rows = torch.arange(num_rows, device=device)  # original row of each batch position
        alive = torch.ones(num_rows, dtype=torch.bool, device=device)
        for step in range(max_tokens):
            logp = torch.log_softmax(last_logits.float() / temperature, dim=-1)
            token = sample_tokens(logp, top_p, self.generator)
            # Rows that finished but are not dropped yet write past their end here; the
            # recorded lengths mask that out in _package.
            tokens_out[rows, step] = token
            logprobs_out[rows, step] = logp.gather(1, token[:, None])[:, 0]
            if entropies_out is not None:
                entropies_out[rows, step] = torch.special.entr(logp.exp()).sum(dim=-1)
            is_eos = token == eos_ids[0] if len(eos_ids) == 1 else torch.isin(token, eos_ids)
            finished = alive & is_eos
            if bool(finished.any()):
                lengths[rows[finished]] = step + 1
                stopped[rows[finished]] = True
                alive = alive & ~finished
            if step == max_tokens - 1:
                break
            num_alive = int(alive.sum())
            if num_alive == 0:
                break
            if len(rows) - num_alive >= max(1.0, COMPACT_FRACTION * len(rows)):
                keep = alive.nonzero()[:, 0]
                cache.batch_select_indices(keep)
                rows, token, attention, next_position = rows[keep], token[keep], attention[keep], next_position[keep]
                alive = alive[keep]
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            out = self.model(
                input_ids=token[:, None],
                attention_mask=attention if needs_mask else None,
                position_ids=next_position[:, None],
                use_cache=True,
                **self.cache_argument(cache),
            )
            cache = output_cache(out)
            last_logits = out.logits[:, -1]
            next_position = next_position + 1
        return tokens_out, logprobs_out, entropies_out, lengths, stopped

    def _package(
        self,
        prompts: list[list[int]],
        n: int,
        tokens: torch.Tensor,
        logprobs: torch.Tensor,
        entropies: torch.Tensor | None,
        lengths: torch.Tensor,
        stopped: torch.Tensor,
        version: int,
    ) -> SampleBatch:
        width = int(lengths.max())
        lengths_N = lengths.cpu().numpy()
        mask_N_T = np.arange(width)[None, :] < lengths_N[:, None]
        token_ids_N_T = tokens[:, :width].cpu().numpy()
        token_ids_N_T[~mask_N_T] = self.pad_token_id
        logprobs_N_T = np.where(mask_N_T, logprobs[:, :width].cpu().numpy(), 0.0).astype(np.float32)
        entropies_N_T = None
        if entropies is not None:
            entropies_N_T = np.where(mask_N_T, entropies[:, :width].cpu().numpy(), 0.0).astype(np.float32)
        rows = [token_ids_N_T[row, : lengths_N[row]].tolist() for row in range(len(lengths_N))]
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        spans = self.spans.batch_spans(rows, texts)
        return SampleBatch(
            prompt_token_ids=[list(ids) for ids in prompts],
            group_size=n,
            token_ids_N_T=token_ids_N_T,
            mask_N_T=mask_N_T,
            loss_mask_N_T=mask_N_T,
            logprobs_N_T=logprobs_N_T,
            finish_reasons=["stop" if flag else "length" for flag in stopped.cpu().tolist()],
            texts=texts,
            entropies_N_T=entropies_N_T,
            token_char_spans=spans,
            policy_version=version,
        )

    def cache_argument(self, cache: object) -> dict[str, object]:
        """``{name: cache}`` for the model's forward: ``cache`` in current transformers,
        ``past_key_values`` in releases before it."""
        return {self._cache_name: cache}


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L]`` token ids left-padded with ``pad_id``, and the mask of real tokens (int64)."""
    width = max(len(ids) for ids in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def sample_tokens(logp: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of ``logp`` ([B, V] log-probabilities), nucleus-restricted if ``top_p < 1``.

    Inverse-CDF sampling: one uniform draw per row, located in the running sum of the
    probabilities (accumulated in float64 so large vocabularies keep their tail).
    """
    probs = logp.exp()
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        # Keep a token while the mass before it is below top_p: the smallest set reaching top_p.
        probs = probs.masked_fill((probs.cumsum(dim=-1) - probs) >= top_p, 0.0)
    cdf = probs.double().cumsum(dim=-1)
    draw = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=torch.float64)
    # right=True skips zero-probability tokens: the first index whose cdf exceeds the draw.
    token = torch.searchsorted(cdf, draw * cdf[:, -1:], right=True).clamp_(max=probs.shape[1] - 1)
    if order is not None:
        token = order.gather(1, token)
    return token[:, 0]


def cache_argument_name(model: torch.nn.Module) -> str:
    """The name under which ``model``'s forward takes a KV cache (PEFT wrappers forward
    ``**kwargs``, so the base model's signature decides)."""
    get_base_model = getattr(model, "get_base_model", None)
    base = get_base_model() if callable(get_base_model) else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def output_cache(output: object) -> Cache:
    """The KV cache a forward returned, under its current name or the older one."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values")
    if not isinstance(cache, Cache):
        raise EngineError(f"the model's forward returned {type(cache).__name__} as its KV cache, not a transformers "
                          "Cache — use a transformers model whose forward returns a Cache object")
    return cache


def eos_token_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(token) for token in configured)
    return sorted(ids)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    # Sampling must not apply dropout; the model goes back to its previous mode after.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------
# Attaching the sampler to a policy held in this process


def attach(policy: InProcessPolicy, device: str, dtype: str, own_copy: bool, prefix_caching: bool,
           seed: int) -> Sampler:
    """A sampler on ``policy``: sharing its weights and lock, or (``own_copy``) on a copy
    of the model cast to ``dtype`` on ``device`` with a lock of its own."""
    generator = torch.Generator(device=device)
    if seed >= 0:
        generator.manual_seed(seed)
    else:
        generator.seed()
    if not own_copy:
        return Sampler(policy.model, policy.tokenizer, device=device, generator=generator,
                       prefix_caching=prefix_caching, weights_lock=policy.weights_lock, live_version=policy.version)
    with policy.weights_lock:
        model = copy.deepcopy(policy.model).to(device=device, dtype=getattr(torch, dtype))
        version = policy.version()
    model.requires_grad_(False)
    model.eval()
    sampler = Sampler(model, policy.tokenizer, device=device, generator=generator, prefix_caching=prefix_caching)
    sampler.policy_version = version
    return sampler


def refresh_copy(sampler: Sampler, policy: InProcessPolicy) -> None:
    """Copy the trainable weights of ``policy`` (the only ones an update changes) into the
    sampler's own copy, under both locks so neither side sees half-copied weights."""
    copies = dict(sampler.model.named_parameters())
    with policy.weights_lock, sampler.weights_lock, torch.no_grad():
        for name, param in policy.model.named_parameters():
            if param.requires_grad:
                copies[name].copy_(param)
        sampler.policy_version = policy.version()


def save_rng(sampler: Sampler, file: Path) -> None:
    """Write the sampler's generator state to ``file`` (atomically)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    staging = file.with_name(f".{file.name}.tmp")
    torch.save({"generator": sampler.rng_state().cpu()}, staging)
    os.replace(staging, file)


def load_rng(sampler: Sampler, file: Path) -> None:
    """Restore a generator state written by ``save_rng``; a missing or unreadable file is
    an ``EngineError`` naming it."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        sampler.set_rng_state(state["generator"])
    except (FileNotFoundError, pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError) as exc:
        raise EngineError(f"cannot restore the pytorch engine's sampling state from {file} "
                          f"({type(exc).__name__}: {exc}) — resume from another checkpoint, or start afresh") from exc
