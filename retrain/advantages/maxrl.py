"""MaxRL: the group-relative advantage divided by the group's success rate.

For the G completions of one prompt with rewards r_1..r_G and ``mu = mean_j(r_j)``::

    A_i = 0                            if mu <= 1e-6
    A_i = (r_i - mu) / (mu + 1e-6)     otherwise

Maximum Likelihood Reinforcement Learning, Tajwar et al., 2026 (arXiv:2602.02710). With
binary rewards ``mu`` estimates the pass rate p, and ``grad log p = grad p / p``: the
GRPO estimate of ``grad p`` divided by ``mu`` follows the log-likelihood of success
instead of the success rate, so rare successes on hard prompts get a large push. The
floor keeps a group without any success (nothing to divide by) at 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from retrain.registry import register

MAXRL_MEAN_FLOOR = 1e-6
MAXRL_EPS = 1e-6


@register("advantage")
def maxrl_advantages(rewards_P_G: np.ndarray, params: Mapping[str, object] | None = None) -> np.ndarray:
    """MaxRL: A = (r - mean) / (mean + 1e-6) per group, 0 when mean <= 1e-6."""
    rewards = np.asarray(rewards_P_G, dtype=np.float64)
    mean_P_1 = rewards.mean(axis=1, keepdims=True)
    # np.where evaluates both branches; the floor keeps the unused one finite.
    safe_denominator = np.maximum(mean_P_1, MAXRL_MEAN_FLOOR) + MAXRL_EPS
    return np.where(mean_P_1 > MAXRL_MEAN_FLOOR, (rewards - mean_P_1) / safe_denominator, 0.0)
