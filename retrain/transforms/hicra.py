"""HICRA: amplify the credit of planning tokens.

After GTPO, with ``alpha = [hicra] alpha`` in [0, 1) and ``m_t = 1`` on planning tokens::

    a_t <- a_t + alpha |a_t|        where m_t = 1
    a_t unchanged                   where m_t = 0

Hierarchy-Aware Credit Assignment, Wang et al., 2025, "Emergent Hierarchical Reasoning in
LLMs through Reinforcement Learning" (arXiv:2509.03646). Planning tokens ("wait, let me
check", "the key insight") move up and never flip sign: a correct plan is reinforced by
``1 + alpha``, a wrong one penalised by only ``1 - alpha``.

Precision: the code multiplies by ``1 + alpha`` or ``1 - alpha`` instead of adding
``alpha |a_t|``; near ``alpha = 1`` the sum cancels (it keeps ``2^-24 / (1 - alpha)`` of
``a_t``, and at ``alpha = 1 - 1e-9`` float32 rounds ``alpha`` to 1 and the sign is lost),
while the product is exact to two float32 roundings (``1 - alpha`` is formed in float64).
"""

from __future__ import annotations

import numpy as np

from retrain.config.schema import HICRAConfig
from retrain.registry import register
from retrain.transforms.context import TransformContext, TransformOutput


def hicra_amplify(token_advantages_N_T: np.ndarray, planning_N_T: np.ndarray, alpha: float) -> np.ndarray:
    """``a_t + alpha |a_t|`` on planning tokens, other tokens unchanged (float32 copy).

    ``token_advantages_N_T`` must be finite.
    """
    advantages = np.asarray(token_advantages_N_T, dtype=np.float32)
    amplified = advantages.copy()
    if alpha == 0.0:
        return amplified
    factor = np.where(advantages > 0.0, np.float32(1.0 + alpha), np.float32(1.0 - alpha))
    np.multiply(advantages, factor, out=amplified, where=np.asarray(planning_N_T, dtype=bool))
    return amplified


@register("transform", params=HICRAConfig, params_section="hicra", needs_planning=True)
def hicra(ctx: TransformContext, params: HICRAConfig) -> TransformOutput:
    """HICRA planning-token amplification: a_t + alpha |a_t| on planning tokens."""
    return TransformOutput(hicra_amplify(ctx.token_advantages_N_T, ctx.planning_N_T, params.alpha))
