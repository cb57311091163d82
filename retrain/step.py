"""One RL step, top to bottom (DESIGN §2), and the built objects it runs through:

    prompts ─ collector (engine.generate, reward.score) ─▶ trajectories, rewards_P_G
            ─ planning detector ─▶ planning_N_T
            ─ credit pipeline (advantage → uncertainty → transforms) ─▶ token_advantages_N_T
            ─ backend.train_step ─▶ loss
            ─ publisher (backend.publish → engine.load) ─▶ the engine serves the new version

Every variation (which estimator, transform, backend, engine, dynamic sampling, sampling
ahead) enters through the objects of the ``Run``; the step itself has no feature
switches. Groups whose rewards are all equal carry no signal and are not trained on.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrain.config.schema import Config
from retrain.credit import CreditPipeline
from retrain.publication import Publisher
from retrain.sinks import Sinks
from retrain.types import (
    Backend,
    Collected,
    Collector,
    CreditResult,
    Engine,
    PlanningDetector,
    SampleBatch,
    StepObserver,
    TrainBatch,
    TrainResult,
)


@dataclass
class Run:
    """A built run: its config, where it writes, and every component of a step."""

    config: Config
    log_dir: Path
    adapter_dir: Path
    seed: int
    backend: Backend
    engine: Engine
    collector: Collector
    planning: PlanningDetector
    credit: CreditPipeline
    publisher: Publisher
    sinks: Sinks
    # Read each step's row, add their metrics, may steer later steps (backpressure).
    observers: list[StepObserver] = field(default_factory=list)
    start_step: int = 1
    # What ``close`` releases, in reverse order of building: the collector (its sampling
    # thread), the engine, the backend, the sinks.
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        self.resources.close()


@dataclass
class StepRecord:
    """Everything one step produced, for the metrics row and the generations log."""

    step: int
    collected: Collected
    credit: CreditResult
    train: TrainResult
    policy_version: int
    # Policy versions between the samples and the weights they trained (0 = on-policy).
    staleness: int
    timings: dict[str, float] = field(default_factory=dict)


def rl_step(run: Run, step: int) -> StepRecord:
    clock = Clock()
    collected = run.collector.collect(step)
    clock.lap("collect_time_s")
    samples = collected.samples
    planning_N_T = run.planning.detect(samples.texts, samples.token_char_spans)
    credit = run.credit(collected.rewards_P_G, samples, planning_N_T, step)
    clock.lap("credit_time_s")
    batch = informative_train_batch(samples, credit, run.config.training.temperature)
    staleness = run.backend.policy_version - samples.policy_version
    train = run.backend.train_step(batch) if batch.num_rows else TrainResult(loss=0.0, skipped=True)
    clock.lap("train_time_s")
    version = run.publisher.publish()
    clock.lap("sync_time_s")
    return StepRecord(step, collected, credit, train, version, staleness, clock.laps)


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


class NoPlanning:
    """The detector when no stage reads planning tokens: every token is an execution token."""

    def detect(self, texts: list[str], token_char_spans: list[list[tuple[int, int]]] | None) -> np.ndarray:
        width = max((len(spans) for spans in token_char_spans or []), default=0)
        return np.zeros((len(texts), width), dtype=bool)


class Clock:
    """Wall time per stage; ``lap`` books the time since the previous lap."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now
