"""The first stage of a step: take prompts, sample G trajectories each, score them.

``GroupCollector`` does one round. ``RefillingCollector`` adds dynamic sampling: when
groups with identical rewards (no learning signal) leave the batch short of informative
groups, it draws further prompts, at most ``dynamic_sampling_max_rounds`` extra rounds
per step, each asking only for the number of groups still missing, and keeps the
informative groups of those rounds. ``LookaheadCollector`` is asynchrony
(``[training] max_staleness = k >= 1``): it samples up to k steps ahead of training, in a
background thread, so step s may come from a policy up to k updates old.
"""

from __future__ import annotations

import threading

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from retrain.data.stream import PromptStream
from retrain.errors import PluginError
from retrain.types import Collected, Encoder, Engine, Environment, Example, SampleBatch, SamplingParams, Scored

T = TypeVar("T")


@dataclass(frozen=True)
class SamplingSettings:
    """Prompts per step, and how each prompt's group is sampled."""

    batch_size: int
    params: SamplingParams

    @property
    def group_size(self) -> int:
        return self.params.n


class BatchSizes:
    """The number of prompts of each step: ``[training] batch_size`` unless a controller
    (backpressure) changes it with ``change``. A step's size is fixed the first time the
    step is sampled — by a sampler running ahead, possibly several steps early — so a
    change applies to the steps not sampled yet, and the prompts keep their order: each
    step takes the next ``size`` prompts of the stream. The fixed sizes of steps after a
    checkpoint are part of its state, so a resumed run samples those steps alike."""

    def __init__(self, initial: int) -> None:
        self.next = initial
        self.fixed: dict[int, int] = {}
        self.lock = threading.Lock()  # the sampling-ahead thread fixes sizes too

    def for_step(self, step: int) -> int:
        with self.lock:
            return self.fixed.setdefault(step, self.next)

    def change(self, size: int, after_step: int) -> None:
        """Use ``size`` for every step not sampled yet; forget steps up to ``after_step``."""
        with self.lock:
            self.next = size
            self.fixed = {step: fixed for step, fixed in self.fixed.items() if step > after_step}

    def state_dict(self) -> dict[str, object]:
        with self.lock:
            return {"next": self.next, "fixed": {str(step): size for step, size in self.fixed.items()}}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        fixed = state["fixed"]
        if not isinstance(fixed, dict) or not isinstance(state["next"], int):
            raise TypeError("batch sizes: next must be an integer and fixed a table")
        with self.lock:
            self.next = state["next"]
            self.fixed = {int(step): int(size) for step, size in fixed.items()}


class GroupCollector:
    """One round: the step's batch size of prompts from the stream, ``group_size``
    episodes each, played and scored by the environment."""

    def __init__(self, stream: PromptStream, environment: Environment, engine: Engine, encode: Encoder,
                 settings: SamplingSettings, sizes: BatchSizes | None = None) -> None:
        self.stream = stream
        self.environment = environment
        self.engine = engine
        self.encode = encode
        self.settings = settings
        self.sizes = sizes or BatchSizes(settings.batch_size)

    def collect(self, step: int) -> Collected:
        return self.sample_and_score(self.stream.next_batch(self.sizes.for_step(step)))

    def sample_and_score(self, examples: list[Example]) -> Collected:
        scored = self.environment.rollout(examples, self.engine, self.encode, self.settings.params)
        rewards_P_G = checked_rewards(scored, len(examples), self.settings.group_size, type(self.environment).__name__)
        return Collected(examples, scored.samples, rewards_P_G, dict(scored.timings),
                         {**scored.counts, "refill_rounds": 0.0, "refill_prompts": 0.0})

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.stream.load_state_dict(state)

    def close(self) -> None:
        """Nothing runs in the background here."""


def checked_rewards(scored: Scored, prompts: int, group_size: int, who: str) -> np.ndarray:
    """The round's rewards as ``[P, G]``, after checking that the environment played
    ``group_size`` episodes per prompt and gave each one finite reward."""
    expected = prompts * group_size
    rows = len(scored.samples.texts)
    rewards_N = np.asarray(scored.rewards_N, dtype=np.float64)
    fix = "fix the environment's rollout (or the engine / reward it uses)"
    if rows != expected or scored.samples.group_size != group_size:
        raise PluginError(f"environment {who} returned {rows} trajectories in groups of {scored.samples.group_size} "
                          f"for {prompts} prompts x {group_size} episodes (expected {expected} in groups of "
                          f"{group_size}) — {fix}")
    if rewards_N.shape != (expected,):
        raise PluginError(f"environment {who} returned rewards of shape {rewards_N.shape} for {expected} "
                          f"trajectories — {fix}")
    if not np.all(np.isfinite(rewards_N)):
        bad = int(np.flatnonzero(~np.isfinite(rewards_N))[0])
        raise PluginError(f"environment {who} gave trajectory {bad} the reward {rewards_N[bad]}; rewards must be "
                          f"finite numbers — {fix}")
    return rewards_N.reshape(prompts, group_size)


def informative_groups(rewards_P_G: np.ndarray) -> np.ndarray:
    """True for groups whose rewards are not all equal."""
    return rewards_P_G.max(axis=1) > rewards_P_G.min(axis=1)


class RefillingCollector(GroupCollector):
    """Dynamic sampling: top the batch up with informative groups from extra prompts."""

    def __init__(self, stream: PromptStream, environment: Environment, engine: Engine, encode: Encoder,
                 settings: SamplingSettings, max_rounds: int, sizes: BatchSizes | None = None) -> None:
        super().__init__(stream, environment, engine, encode, settings, sizes)
        self.max_rounds = max_rounds

    def collect(self, step: int) -> Collected:
        collected = super().collect(step)
        parts = [collected]
        keep = [np.ones(len(collected.examples), dtype=bool)]
        missing = self.sizes.for_step(step) - int(informative_groups(collected.rewards_P_G).sum())
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
        merged.counts.update({"refill_rounds": float(rounds), "refill_prompts": float(prompts)})
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
    return Collected(examples, samples, rewards, _summed([part.timings for part in parts]),
                     _summed([part.counts for part in parts]))


def _summed(tables: list[dict[str, float]]) -> dict[str, float]:
    """Timings and counts of several rounds: each name's values added up."""
    total: dict[str, float] = {}
    for table in tables:
        for name, value in table.items():
            total[name] = total.get(name, 0.0) + value
    return total


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
        entropies_N_T=np.concatenate([_pad_to(_present(b.entropies_N_T)[r], width) for b, r in zip(batches, rows)])
        if with_entropies else None,
        token_char_spans=[_present(b.token_char_spans)[i] for b, r in zip(batches, rows) for i in r]
        if with_spans else None,
        policy_version=min(batch.policy_version for batch in batches),
        counts=_summed([batch.counts for batch in batches]),
    )


def _present(value: T | None) -> T:
    """``value``, known here not to be None (the caller checked every batch has it)."""
    assert value is not None
    return value


class LookaheadCollector:
    """Sampling ahead of training: ``[training] max_staleness = k >= 1``.

    When training asks for step s, the trajectories of steps s+1 .. s+k may already be
    sampled, or be sampling, in one background thread while step s trains; step s+k
    starts no earlier than that request, after the update of step s-1 was published, so
    it comes from a policy at most k versions older than the one that trains on it (the
    importance ratio in the loss corrects for the lag). Steps are sampled in order, and
    each remembers the prompt cursor after its draw: ``state_dict`` is the cursor after
    the last step handed to training, so a checkpoint never skips nor repeats the prompts
    of steps still in flight — a resumed run samples them afresh from its restored policy.
    """

    def __init__(self, inner: GroupCollector, max_staleness: int, last_step: int) -> None:
        self.inner = inner
        self.max_staleness = max_staleness
        self.last_step = last_step
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrain-sampler")
        self.pending: dict[int, Future[tuple[Collected, dict[str, int]]]] = {}
        self.consumed_state = inner.state_dict()

    def collect(self, step: int) -> Collected:
        if self.pending and min(self.pending) != step:
            raise RuntimeError(f"steps must be collected in order: step {step} asked, {min(self.pending)} is next")
        for ahead in range(step, min(step + self.max_staleness, self.last_step) + 1):
            if ahead not in self.pending:
                self.pending[ahead] = self.pool.submit(self._sample, ahead)
        collected, after = self.pending.pop(step).result()
        self.consumed_state = after
        return collected

    def _sample(self, step: int) -> tuple[Collected, dict[str, int]]:
        collected = self.inner.collect(step)
        return collected, self.inner.state_dict()

    def state_dict(self) -> dict[str, int]:
        return dict(self.consumed_state)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if self.pending:
            raise RuntimeError("the prompt cursor can only be restored before sampling starts")
        self.inner.load_state_dict(state)
        self.consumed_state = dict(state)

    def close(self) -> None:
        """Drop steps not started; wait for the one sampling (a generate call cannot be cut)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()
