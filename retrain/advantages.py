"""Episode advantages: one scalar per completion, computed group-wise for the whole batch.

Rewards arrive as ``rewards_P_G`` (P prompts, G completions each). Both estimators work on
the whole array at once:

- GRPO (Shao et al., 2024, "DeepSeekMath"), without the std division:
  ``A_i = r_i - mean(r)``.
- MaxRL (maximum-likelihood RL): with ``mu = mean(r)``, ``A_i = 0`` for every i when
  ``mu <= 1e-6``, else ``A_i = (r_i - mu) / (mu + 1e-6)``. Dividing by the success rate
  gives rare successes a large push, which is what maximising the log of the success
  probability asks for.

A group whose rewards are all equal carries no learning signal (every advantage is 0);
``group_stats`` finds those groups and says why they tie, so the trainer can drop them
and the logs can show whether the prompts are too hard or too easy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

MAXRL_MEAN_FLOOR = 1e-6
MAXRL_EPS = 1e-6
# A completion counts as correct when it earns the full score of the built-in
# verifiable rewards (1.0), and as wrong when it earns nothing.
CORRECT_REWARD = 1.0


def grpo_advantages(rewards_P_G: np.ndarray, params: Mapping[str, object] | None = None) -> np.ndarray:
    """GRPO: ``A = r - mean_group(r)`` for each group (row)."""
    rewards = np.asarray(rewards_P_G, dtype=np.float64)
    return rewards - rewards.mean(axis=1, keepdims=True)


def maxrl_advantages(rewards_P_G: np.ndarray, params: Mapping[str, object] | None = None) -> np.ndarray:
    """MaxRL: ``A = (r - mu) / (mu + 1e-6)`` per group, 0 for groups with ``mu <= 1e-6``."""
    rewards = np.asarray(rewards_P_G, dtype=np.float64)
    mean_P_1 = rewards.mean(axis=1, keepdims=True)
    # np.where evaluates both branches; the floor keeps the unused one finite.
    safe_denominator = np.maximum(mean_P_1, MAXRL_MEAN_FLOOR) + MAXRL_EPS
    return np.where(mean_P_1 > MAXRL_MEAN_FLOOR, (rewards - mean_P_1) / safe_denominator, 0.0)


def correct_rate(rewards_P_G: np.ndarray) -> float:
    """Fraction of completions with the full reward (``r >= 1.0``); 0 for an empty batch."""
    rewards = np.asarray(rewards_P_G, dtype=np.float64)
    if rewards.size == 0:
        return 0.0
    return float(np.mean(rewards >= CORRECT_REWARD))


@dataclass(frozen=True)
class GroupStats:
    """Which groups carry signal, and why the others tie."""

    informative_P: np.ndarray
    all_correct: int
    all_wrong: int
    other_ties: int

    @property
    def uniform(self) -> int:
        return self.all_correct + self.all_wrong + self.other_ties


def group_stats(rewards_P_G: np.ndarray) -> GroupStats:
    """Find the groups whose rewards are all equal and classify them.

    A tie at or above the full reward is "all correct", a tie at or below 0 is "all
    wrong", any other tie (e.g. every completion scored 0.5) is "other".
    """
    rewards = np.asarray(rewards_P_G, dtype=np.float64)
    uniform_P = np.all(rewards == rewards[:, :1], axis=1) if rewards.shape[1] else np.ones(len(rewards), bool)
    first_P = rewards[:, 0] if rewards.shape[1] else np.zeros(len(rewards))
    all_correct_P = uniform_P & (first_P >= CORRECT_REWARD)
    all_wrong_P = uniform_P & (first_P <= 0.0)
    return GroupStats(
        informative_P=~uniform_P,
        all_correct=int(all_correct_P.sum()),
        all_wrong=int(all_wrong_P.sum()),
        other_ties=int((uniform_P & ~all_correct_P & ~all_wrong_P).sum()),
    )
