"""GRPO on length-penalised rewards (an example whole-pipeline algorithm plugin).

Long completions pay a small price relative to the longest completion of the batch::

    r'_i = r_i - penalty * L_i / T          (L_i the tokens completion i sampled, T the most of the batch)
    A_i  = r'_i - mean_group(r')            (GRPO)
    a_t  = A_i on every token of completion i

Among equally correct completions the shorter ones get the larger advantage. Use it
with::

    [algorithm]
    algorithm_mode = "length_penalty.length_penalty"

    [algorithm.params]
    penalty = 0.1
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrain.plugin_api import (
    AlgorithmContext,
    AlgorithmOutput,
    broadcast_advantages,
    grpo_advantages,
    register,
    setting,
)


@dataclass(frozen=True)
class LengthPenaltyParams:
    penalty: float = setting(0.1, "Reward subtracted for a completion as long as the longest of the batch", ge=0.0)


@register("algorithm", params=LengthPenaltyParams)
def length_penalty(ctx: AlgorithmContext, params: LengthPenaltyParams) -> AlgorithmOutput:
    """GRPO advantages of the rewards minus a length penalty; uniform over tokens."""
    lengths_N = np.asarray(ctx.mask_N_T, dtype=bool).sum(axis=1)
    longest = max(int(lengths_N.max(initial=0)), 1)
    penalised_P_G = ctx.rewards_P_G - params.penalty * (lengths_N / longest).reshape(ctx.rewards_P_G.shape)
    advantages_P_G = grpo_advantages(penalised_P_G)
    return AlgorithmOutput(
        episode_advantages=advantages_P_G,
        token_advantages=broadcast_advantages(advantages_P_G.reshape(-1), ctx.mask_N_T),
        metrics={"length_penalty_mean": float(params.penalty * (lengths_N / longest).mean())},
    )
