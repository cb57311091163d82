"""Group statistics of the rewards: which groups carry a learning signal, and the
correct rate.

A group is the G completions of one prompt. When all G rewards are equal every
group-relative advantage is 0, so the group teaches nothing; ``group_stats`` finds
those groups and says why they tie, so the trainer can drop them and the logs can show
whether the prompts are too hard (all wrong) or too easy (all correct).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A completion counts as correct when it earns the full score of the built-in
# verifiable rewards (1.0), and as wrong when it earns nothing.
CORRECT_REWARD = 1.0


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
