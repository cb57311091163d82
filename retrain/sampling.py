"""The first stage of a step: take prompts, sample G completions each, score them.

``GroupCollector`` does one round. ``RefillingCollector`` adds dynamic sampling: when
groups with identical rewards (no learning signal) leave the batch short of informative
groups, it draws further prompts, at most ``dynamic_sampling_max_rounds`` extra rounds
per step, each asking only for the number of groups still missing, and keeps the
informative groups of those rounds. ``PrefetchingCollector`` (split mode) samples step
k+1 while step k trains, so the completions of a step come from a policy at most one
update old; the staleness is reported per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from retrain.data.stream import PromptStream
from retrain.engines.base import Engine
from retrain.rewards.base import Reward
from retrain.types import Example, Message, SampleBatch


@dataclass
class Collected:
    """The scored groups of one step: ``examples[p]`` is the prompt of group ``p``."""

    examples: list[Example]
    samples: SampleBatch
    rewards_P_G: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplingSettings:
    batch_size: int
    group_size: int
    max_tokens: int
    temperature: float
    top_p: float
    want_entropies: bool


class GroupCollector:
    """One round: ``batch_size`` prompts, ``group_size`` completions each, scored."""

    def __init__(self, stream: PromptStream, encode: Callable[[tuple[Message, ...]], list[int]], engine: Engine,
                 reward: Reward, settings: SamplingSettings) -> None:
        self.stream = stream
        self.encode = encode
        self.engine = engine
        self.reward = reward
        self.settings = settings

    def collect(self, step: int) -> Collected:
        return self.sample_and_score(self.stream.next_batch(self.settings.batch_size))

    def sample_and_score(self, examples: list[Example]) -> Collected:
        settings = self.settings
        start = time.perf_counter()
        samples = self.engine.generate(
            [self.encode(example.messages) for example in examples], settings.group_size, settings.max_tokens,
            settings.temperature, settings.top_p, settings.want_entropies,
        )
        sampled = time.perf_counter()
        rewards_N = np.asarray(self.reward.score(samples.texts, examples), dtype=np.float64)
        scored = time.perf_counter()
        timings = {"sample_time_s": sampled - start, "reward_time_s": scored - sampled}
        return Collected(examples, samples, rewards_N.reshape(len(examples), settings.group_size), timings,
                         {"refill_rounds": 0.0, "refill_prompts": 0.0})

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.load_state_dict(state)

    def close(self) -> None:
        """Nothing runs in the background here."""


def informative_groups(rewards_P_G: np.ndarray) -> np.ndarray:
    """True for groups whose rewards are not all equal."""
    return rewards_P_G.max(axis=1) > rewards_P_G.min(axis=1)


class RefillingCollector(GroupCollector):
    """Dynamic sampling: top the batch up with informative groups from extra prompts."""

    def __init__(self, *args: object, max_rounds: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.max_rounds = max_rounds

    def collect(self, step: int) -> Collected:
        collected = super().collect(step)
        parts = [collected]
        keep = [np.ones(len(collected.examples), dtype=bool)]
        missing = self.settings.batch_size - int(informative_groups(collected.rewards_P_G).sum())
        rounds = prompts = 0
        while missing > 0 and rounds < self.max_rounds:
            extra = self.sample_and_score(self.stream.next_batch(missing))
            informative = informative_groups(extra.rewards_P_G)
            parts.append(extra)
            keep.append(informative)
            rounds += 1
            prompts += missing
            missing -= int(informative.sum())
        merged = merge_collected(parts, keep)
        merged.counts = {"refill_rounds": float(rounds), "refill_prompts": float(prompts)}
        return merged


def merge_collected(parts: list[Collected], keep: list[np.ndarray]) -> Collected:
    """Concatenate the kept groups of several rounds into one batch."""
    if len(parts) == 1:
        return parts[0]
    group_size = parts[0].samples.group_size
    examples = [example for part, kept in zip(parts, keep) for example, k in zip(part.examples, kept) if k]
    rewards = np.concatenate([part.rewards_P_G[kept] for part, kept in zip(parts, keep)])
    rows = [np.flatnonzero(np.repeat(kept, group_size)) for kept in keep]
    samples = concat_samples([part.samples for part in parts], rows, keep)
    timings: dict[str, float] = {}
    for part in parts:
        for name, value in part.timings.items():
            timings[name] = timings.get(name, 0.0) + value
    return Collected(examples, samples, rewards, timings)


def _pad_to(array: np.ndarray, width: int) -> np.ndarray:
    return np.pad(array, ((0, 0), (0, width - array.shape[1])))


def concat_samples(batches: list[SampleBatch], rows: list[np.ndarray], keep_P: list[np.ndarray]) -> SampleBatch:
    """Rows ``rows[i]`` of ``batches[i]`` (and prompts ``keep_P[i]``), padded to a common T."""
    width = max(batch.token_ids_N_T.shape[1] for batch in batches)
    with_entropies = all(batch.entropies_N_T is not None for batch in batches)
    with_spans = all(batch.token_char_spans is not None for batch in batches)
    return SampleBatch(
        prompt_token_ids=[ids for batch, kept in zip(batches, keep_P) for ids, k in zip(batch.prompt_token_ids, kept) if k],
        group_size=batches[0].group_size,
        token_ids_N_T=np.concatenate([_pad_to(b.token_ids_N_T[r], width) for b, r in zip(batches, rows)]),
        mask_N_T=np.concatenate([_pad_to(b.mask_N_T[r], width) for b, r in zip(batches, rows)]),
        loss_mask_N_T=np.concatenate([_pad_to(b.loss_mask_N_T[r], width) for b, r in zip(batches, rows)]),
        logprobs_N_T=np.concatenate([_pad_to(b.logprobs_N_T[r], width) for b, r in zip(batches, rows)]),
        finish_reasons=[b.finish_reasons[i] for b, r in zip(batches, rows) for i in r],
        texts=[b.texts[i] for b, r in zip(batches, rows) for i in r],
        entropies_N_T=np.concatenate([_pad_to(b.entropies_N_T[r], width) for b, r in zip(batches, rows)])  # type: ignore[index]
        if with_entropies else None,
        token_char_spans=[b.token_char_spans[i] for b, r in zip(batches, rows) for i in r]  # type: ignore[index]
        if with_spans else None,
        policy_version=min(batch.policy_version for batch in batches),
    )


class PrefetchingCollector:
    """Split mode: while step k trains, step k+1 is already being sampled.

    ``state_dict`` returns the data cursor as it was before the batch in flight was
    drawn, so a checkpoint never skips the prompts of that batch.
    """

    def __init__(self, inner: GroupCollector, last_step: int) -> None:
        self.inner = inner
        self.last_step = last_step
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrain-sampler")
        self.pending: tuple[int, Future[Collected]] | None = None
        self.state_before_pending = inner.state_dict()

    def collect(self, step: int) -> Collected:
        if self.pending is None or self.pending[0] != step:
            self.pending = (step, self.pool.submit(self.inner.collect, step))
        collected = self.pending[1].result()
        self.pending = None
        self.state_before_pending = self.inner.state_dict()
        if step < self.last_step:
            self.pending = (step + 1, self.pool.submit(self.inner.collect, step + 1))
        return collected

    def state_dict(self) -> dict[str, int]:
        return self.state_before_pending

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.inner.load_state_dict(state)
        self.state_before_pending = state

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
