"""GRPO: the episode advantage is the reward minus the mean reward of its group.

For the G completions of one prompt with rewards r_1..r_G::

    A_i = r_i - mean_j(r_j)

Group Relative Policy Optimization, Shao et al., 2024, "DeepSeekMath: Pushing the Limits
of Mathematical Reasoning in Open Language Models" (arXiv:2402.03300), without the
division by the group's standard deviation: that division up-weights groups whose
rewards barely differ (Liu et al., 2025, "Understanding R1-Zero-Like Training: A
Critical Perspective", arXiv:2503.20783).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from retrain.registry import register


@register("advantage")
def grpo_advantages(rewards_P_G: np.ndarray, params: Mapping[str, object] | None = None) -> np.ndarray:
    """GRPO: A = r - mean(r) per group."""
    rewards = np.asarray(rewards_P_G, dtype=np.float64)
    return rewards - rewards.mean(axis=1, keepdims=True)
