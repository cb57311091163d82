"""The data contracts of one RL step.

Shape suffixes: P prompts per step, G completions per prompt (the group), N = P * G
completions in prompt-major order (row ``p * G + g`` is completion ``g`` of prompt
``p``), T the longest completion length in the batch. Per-token arrays are padded to
``[N, T]``; ``mask_N_T`` is True on real tokens. Only numpy crosses stage boundaries,
so the credit-assignment code never needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# A chat message as the tokenizer's chat template takes it: {"role": ..., "content": ...}.
Message = dict[str, str]


@dataclass(frozen=True)
class Example:
    """One training prompt and the reference its completions are scored against."""

    example_id: str
    messages: tuple[Message, ...]
    reference: str
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass
class SampleBatch:
    """What the inference engine returns for one step: G completions per prompt.

    ``logprobs_N_T`` are the sampler's log-probabilities of the sampled tokens under the
    sampling temperature; ``entropies_N_T`` is the Shannon entropy of the full
    next-token distribution at each position (only when asked for and supported).
    ``finish_reasons`` is "stop" (EOS or a stop string) or "length" (max_tokens hit).
    """

    prompt_token_ids: list[list[int]]
    group_size: int
    token_ids_N_T: np.ndarray
    mask_N_T: np.ndarray
    logprobs_N_T: np.ndarray
    finish_reasons: list[str]
    texts: list[str]
    entropies_N_T: np.ndarray | None = None
    # Token offsets of each completion's text, [N][T] pairs of (start, end) character
    # positions, used to map planning-gram matches to tokens.
    token_char_spans: list[list[tuple[int, int]]] | None = None
    policy_version: int = 0

    @property
    def num_prompts(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def lengths_N(self) -> np.ndarray:
        return self.mask_N_T.sum(axis=1)


@dataclass
class CreditResult:
    """Output of the credit-assignment pipeline for one step."""

    episode_advantages_N: np.ndarray
    token_advantages_N_T: np.ndarray
    uncertainty_N_T: np.ndarray
    # False for groups whose rewards are all equal: they carry no learning signal and
    # are dropped from the update.
    informative_P: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainBatch:
    """What the backend trains on: the informative completions of one step."""

    prompt_token_ids: list[list[int]]
    token_ids_N_T: np.ndarray
    mask_N_T: np.ndarray
    sampler_logprobs_N_T: np.ndarray
    token_advantages_N_T: np.ndarray
    # Index into the step's SampleBatch rows, so a completion maps back to its prompt.
    prompt_index_N: np.ndarray
    temperature: float


@dataclass
class TrainResult:
    """What one optimizer step reports."""

    loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: bool = False
