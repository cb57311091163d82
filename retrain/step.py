"""One RL step, top to bottom (DESIGN §2):

    prompts ─ engine.generate ─▶ samples ─ reward ─▶ rewards_P_G
            ─ planning detector ─▶ planning_N_T
            ─ credit pipeline (advantage → uncertainty → transforms) ─▶ token_advantages_N_T
            ─ backend.train_step ─▶ loss; new weights synced to the engine

Every variation (which estimator, transform, backend, dynamic sampling, split-mode
prefetching) enters through the objects of the ``Run``; the step itself has no feature
switches. Groups whose rewards are all equal carry no signal and are not trained on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from retrain.types import CreditResult, SampleBatch, TrainBatch, TrainResult

if TYPE_CHECKING:
    from retrain.run import Run
    from retrain.sampling import Collected


@dataclass
class StepRecord:
    """Everything one step produced, for the metrics row and the generations log."""

    step: int
    collected: Collected
    credit: CreditResult
    train: TrainResult
    policy_version: int
    timings: dict[str, float] = field(default_factory=dict)


def rl_step(run: Run, step: int) -> StepRecord:
    clock = _Clock()
    collected = run.collector.collect(step)
    clock.lap("collect_time_s")
    samples = collected.samples
    planning_N_T = run.planning.detect(samples.texts, samples.token_char_spans)
    credit = run.credit(collected.rewards_P_G, samples, planning_N_T, step)
    clock.lap("credit_time_s")
    batch = informative_train_batch(samples, credit, run.config.training.temperature)
    train = run.backend.train_step(batch) if len(batch.prompt_index_N) else TrainResult(loss=0.0, skipped=True)
    clock.lap("train_time_s")
    version = run.weights.sync()  # type: ignore[attr-defined]
    clock.lap("sync_time_s")
    return StepRecord(step, collected, credit, train, version, clock.laps)


def informative_train_batch(samples: SampleBatch, credit: CreditResult, temperature: float) -> TrainBatch:
    """The rows of the informative groups (rewards not all equal), ready for the backend."""
    group_size = samples.group_size
    rows_N = np.flatnonzero(np.repeat(credit.informative_P, group_size))
    return TrainBatch(
        prompt_token_ids=samples.prompt_token_ids,
        token_ids_N_T=samples.token_ids_N_T[rows_N],
        mask_N_T=samples.mask_N_T[rows_N],
        loss_mask_N_T=samples.loss_mask_N_T[rows_N],
        sampler_logprobs_N_T=samples.logprobs_N_T[rows_N],
        token_advantages_N_T=credit.token_advantages_N_T[rows_N],
        prompt_index_N=rows_N // group_size,
        temperature=temperature,
    )


class _Clock:
    """Wall time per stage; ``lap`` books the time since the previous lap."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now
