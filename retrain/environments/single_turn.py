"""The single-turn environment: a ``[data]`` source's prompts, one sampled completion per
episode, scored by the ``[reward]``.

Every token of a completion is sampled by the policy, so its loss mask is its real-token
mask; a multi-turn environment is the same contract with environment turns in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from retrain.config.schema import Config
from retrain.types import DataSource, Encoder, Engine, Example, Reward, SamplingParams, Scored


class SingleTurn:
    """Prompts from ``data``, completions from the engine, rewards from ``reward``."""

    def __init__(self, config: Config, *, data: Callable[[Config], DataSource],
                 reward: Callable[[Config], Reward]) -> None:
        self.data = data(config)
        self.reward = reward(config)

    def examples(self) -> Sequence[Example]:
        return self.data.examples()

    def rollout(self, examples: list[Example], engine: Engine, encode: Encoder, params: SamplingParams) -> Scored:
        start = time.perf_counter()
        samples = engine.generate([encode(example.messages) for example in examples], params)
        sampled = time.perf_counter()
        rewards_N = np.asarray(self.reward.score(samples.texts, examples), dtype=np.float64)
        timings = {"sample_time_s": sampled - start, "reward_time_s": time.perf_counter() - sampled}
        repaired = getattr(self.reward, "last_repaired", 0)  # optional: see the Reward protocol
        return Scored(samples, rewards_N, timings, {"plugin_repaired_values": float(repaired)})

    def close(self) -> None:
        """Close the reward and the data source where they hold something (a judge's HTTP
        client, say); the Reward and DataSource contracts leave ``close`` optional."""
        for part in (self.reward, self.data):
            close = getattr(part, "close", None)
            if callable(close):
                close()
