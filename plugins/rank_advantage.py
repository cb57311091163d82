"""Rank-based episode advantages (an example advantage plugin).

Within each group, every completion's reward is replaced by its rank (ties share the
average of their ranks), and the ranks are centred and scaled to ``[-0.5, 0.5]``::

    rank_i = #{j : r_j < r_i} + (#{j : r_j = r_i} - 1) / 2
    A_i    = scale * (rank_i - (G - 1) / 2) / (G - 1)

Only the order of the rewards matters, so a reward with outliers or an arbitrary scale
gives the same advantages as a 0/1 reward with the same order. Advantages sum to zero in
every group, and a group whose rewards are all equal gets 0.

Use it with::

    [algorithm]
    advantage_mode = "rank_advantage.rank_advantages"

    [algorithm.advantage_params]
    scale = 1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrain.plugin_api import register, setting


@dataclass(frozen=True)
class RankParams:
    scale: float = setting(1.0, "Multiplies the centred ranks", gt=0.0)


@register("advantage", params=RankParams)
def rank_advantages(rewards_P_G: np.ndarray, params: RankParams) -> np.ndarray:
    """Centred within-group ranks of the rewards, scaled to [-scale/2, scale/2]."""
    rewards = np.asarray(rewards_P_G, dtype=np.float64)
    group_size = rewards.shape[1]
    # Pairwise comparisons within each group: [P, G, G], small because G is small.
    below = (rewards[:, None, :] < rewards[:, :, None]).sum(axis=2)
    equal = (rewards[:, None, :] == rewards[:, :, None]).sum(axis=2)
    ranks = below + (equal - 1) / 2.0
    return params.scale * (ranks - (group_size - 1) / 2.0) / max(group_size - 1, 1)
