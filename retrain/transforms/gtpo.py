"""GTPO: give the uncertain tokens of a completion more of its credit.

For one completion with episode advantage ``A`` and uncertainty ``u_t`` on its ``n``
sampled tokens, with ``beta = [gtpo] beta``::

    ubar = (1/n) sum_t u_t
    w_t  = 1                                              if beta = 0 or ubar < 1e-7
    w_t  = max(0, 1 + beta (u_t / (ubar + 1e-8) - 1))     otherwise
    a_t  = A w_t

Group Token Policy Optimization, Tan et al., 2025, "GTPO and GRPO-S: Token and
Sequence-Level Reward Shaping with Policy Entropy" (arXiv:2508.04349). Uncertain tokens,
the forks where the reasoning could have gone another way, receive more of the credit;
the weights average 1 over the completion unless the floor at 0 clips some, and no token
gets the opposite sign of ``A``.

Precision: ``w_t`` is formed in float64 and rounded once to float32. In float32 the
formula (or its rearrangement ``(beta / ubar) u_t + (1 - beta)``) cancels: for large
``beta`` its terms are about ``beta`` in size, so a weight near 1 comes out wrong by about
``beta * 2^-24`` (6e-5 at ``beta = 1000``). In float64 the same cancellation costs at most
``(24 + log2 n) 2^-53 (1 + beta (1 + u_t / ubar))`` for ``n`` tokens, below the float32
rounding of the result for every weight not clipped to near 0, at every ``beta`` in
[0, 1000] (the full statement is in ``retrain.transforms.compositions``).
"""

from __future__ import annotations

import numpy as np

from retrain.config.schema import GTPOConfig
from retrain.registry import register
from retrain.transforms.context import TransformContext, TransformOutput

GTPO_MEAN_FLOOR = 1e-7
GTPO_EPS = 1e-8


def gtpo_weights(uncertainty_N_T: np.ndarray, mask_N_T: np.ndarray, beta: float) -> np.ndarray:
    """GTPO token weights ``w_t = max(0, 1 + beta (u_t / (ubar + 1e-8) - 1))``, float32.

    ``ubar`` is the mean over each completion's tokens in ``mask_N_T`` (the sampled
    tokens). Completions with ``ubar < 1e-7`` (and every completion when ``beta = 0``) get
    weight 1; tokens off the mask get 0. ``uncertainty_N_T`` must be finite and 0 off the
    mask, as every stage provides it.
    """
    mask = np.asarray(mask_N_T, dtype=bool)
    if beta == 0.0:
        return mask.astype(np.float32)
    # A float64 copy: the cancellation in 1 + beta (r - 1) needs the precision (see above).
    weights = np.array(uncertainty_N_T, dtype=np.float64)
    count_N = np.count_nonzero(mask, axis=1)
    mean_N = weights.sum(axis=1) / np.maximum(count_N, 1)
    weights /= (mean_N + GTPO_EPS)[:, None]
    weights -= 1.0
    weights *= beta
    weights += 1.0
    np.maximum(weights, 0.0, out=weights)
    weights[mean_N < GTPO_MEAN_FLOOR] = 1.0
    weights *= mask
    return weights.astype(np.float32)


@register("transform", params=GTPOConfig, params_section="gtpo")
def gtpo(ctx: TransformContext, params: GTPOConfig) -> TransformOutput:
    """GTPO uncertainty weighting: a_t = A max(0, 1 + beta (u_t / mean(u) - 1))."""
    weights = gtpo_weights(ctx.uncertainty_N_T, ctx.mask_N_T, params.beta)
    return TransformOutput(ctx.token_advantages_N_T * weights)
