"""A small synthetic ``SampleBatch``, for probing credit pipelines and testing plugins.

Its values come from ``SyntheticRandom``, a counter-based generator (splitmix64) written
with plain numpy integer arithmetic: the same seed gives the same batch on every
machine, and ``retrain explain`` probes a pipeline without importing ``numpy.random``
(a sizeable share of its start-up time).
"""

from __future__ import annotations

import numpy as np

from retrain.types import SampleBatch


class SyntheticRandom:
    """Uniform draws from splitmix64 (Steele, Lea and Flood, 2014) over a running counter,
    with the few ``numpy.random.Generator`` calls the synthetic batch needs."""

    def __init__(self, seed: int) -> None:
        # The seed scrambled into a 64-bit start (multiplication modulo 2**64).
        self.state = np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)

    def _bits(self, count: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            z = self.state + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            self.state = z[-1] if count else self.state
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    def random(self, size: int | tuple[int, ...]) -> np.ndarray:
        """Uniform floats in [0, 1)."""
        shape = (size,) if isinstance(size, int) else size
        count = int(np.prod(shape))
        return ((self._bits(count) >> np.uint64(11)) * 2.0**-53).reshape(shape)

    def integers(self, low: int, high: int, size: int | tuple[int, ...]) -> np.ndarray:
        """Integers in [low, high)."""
        return low + np.floor(self.random(size) * (high - low)).astype(np.int64)

    def exponential(self, scale: float, size: int | tuple[int, ...]) -> np.ndarray:
        return -scale * np.log1p(-self.random(size))


VOCABULARY = ("so", "wait", "let", "me", "check", "x", "=", "3", "+", "4", "the", "key", "insight", "is", "7")


def synthetic_batch(num_prompts: int = 2, group_size: int = 4, max_tokens: int = 16, seed: int = 0,
                    with_entropies: bool = False, with_environment_turns: bool = False) -> SampleBatch:
    """A small random ragged ``SampleBatch`` with consistent texts and character spans.

    Row lengths vary from 0 to ``max_tokens`` (the first row is always empty, the second
    always full); every token is one word of the text. With ``with_environment_turns``
    about half the rows of 4 or more tokens hold an environment turn in their middle: real
    tokens (``mask_N_T`` True) the policy did not sample (``loss_mask_N_T`` False, logprob
    and entropy 0), as a multi-turn rollout has.
    """
    if num_prompts < 1 or group_size < 1 or max_tokens < 1:
        raise ValueError("synthetic_batch needs at least one prompt, one completion per prompt and one token")
    rng = SyntheticRandom(seed)
    rows = num_prompts * group_size
    lengths = rng.integers(0, max_tokens + 1, size=rows)
    lengths[0] = 0
    if rows > 1:
        lengths[1] = max_tokens
    mask = np.arange(max_tokens)[None, :] < lengths[:, None]
    token_ids = np.where(mask, rng.integers(0, len(VOCABULARY), size=mask.shape), 0)
    logprobs = -rng.exponential(1.0, size=mask.shape)
    entropies = rng.exponential(1.0, size=mask.shape) if with_entropies else None
    loss_mask = mask & ~_environment_turns(rng, lengths, max_tokens) if with_environment_turns else mask.copy()
    texts, spans = _texts_and_spans(token_ids, lengths)
    return SampleBatch(
        prompt_token_ids=[[1, 2, 3] for _ in range(num_prompts)],
        group_size=group_size,
        token_ids_N_T=token_ids.astype(np.int64),
        mask_N_T=mask,
        loss_mask_N_T=loss_mask,
        logprobs_N_T=np.where(loss_mask, logprobs, 0.0).astype(np.float32),
        finish_reasons=["stop" if length < max_tokens else "length" for length in lengths],
        texts=texts,
        entropies_N_T=None if entropies is None else np.where(loss_mask, entropies, 0.0).astype(np.float32),
        token_char_spans=spans,
    )


def _environment_turns(rng: SyntheticRandom, lengths_N: np.ndarray, max_tokens: int) -> np.ndarray:
    """A turn of ``max(n // 4, 1)`` tokens from position ``n // 3`` in about half the rows."""
    start_N = lengths_N // 3
    stop_N = start_N + np.maximum(lengths_N // 4, 1)
    has_turn_N = (lengths_N >= 4) & (rng.random(len(lengths_N)) < 0.5)
    positions = np.arange(max_tokens)[None, :]
    return has_turn_N[:, None] & (positions >= start_N[:, None]) & (positions < stop_N[:, None])


def _texts_and_spans(token_ids_N_T: np.ndarray, lengths_N: np.ndarray) -> tuple[list[str], list[list[tuple[int, int]]]]:
    texts, spans = [], []
    for row, length in enumerate(lengths_N):
        words = [VOCABULARY[token] for token in token_ids_N_T[row, :length]]
        row_spans, position = [], 0
        for word in words:
            row_spans.append((position, position + len(word)))
            position += len(word) + 1
        texts.append(" ".join(words))
        spans.append(row_spans)
    return texts, spans
