"""GTPO with a ceiling on the token weights (an example transform plugin).

GTPO gives a token the weight ``w_t = max(0, 1 + beta (u_t / ubar - 1))``; a single very
surprising token can then take a large share of its completion's credit. This transform
caps the weight::

    a_t = A * min(w_t, max_weight)

It reuses the built-in GTPO weights from ``retrain.plugin_api``. Use it with::

    [algorithm]
    transform_mode = "capped_gtpo.capped_gtpo"

    [algorithm.transform_params]
    beta = 0.5
    max_weight = 1.5
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrain.plugin_api import (
    TransformContext,
    broadcast_advantages,
    gtpo_weights,
    register,
    setting,
)


@dataclass(frozen=True)
class CappedGTPOParams:
    beta: float = setting(0.1, "GTPO weighting strength", ge=0.0)
    max_weight: float = setting(2.0, "Largest weight a token can get", gt=0.0)


@register("transform", params=CappedGTPOParams)
def capped_gtpo(ctx: TransformContext, params: CappedGTPOParams) -> np.ndarray:
    """GTPO token advantages with every weight capped at max_weight."""
    weights = np.minimum(gtpo_weights(ctx.uncertainty_N_T, ctx.mask_N_T, params.beta), np.float32(params.max_weight))
    return broadcast_advantages(ctx.episode_advantages_N, ctx.mask_N_T) * weights
