"""SEPA pooling: pull the uncertainty of execution tokens toward their completion's mean.

SEPA (selective entropy pooling) splits a completion's sampled tokens into planning
tokens (``m_t = 1``: "wait, let me check", "the key insight", found by the planning
detector) and execution tokens (``m_t = 0``: the routine steps). Before GTPO turns
uncertainty into token weights, with ``lambda`` from the SEPA schedule
(``retrain.transforms.sepa_schedule``, settings in ``[sepa]``)::

    u_t <- lambda * mean_{s: m_s = 0}(u_s) + (1 - lambda) * u_t      where m_t = 0
    u_t unchanged                                                    where m_t = 1

At ``lambda = 0`` nothing changes; at ``lambda = 1`` every execution token of a
completion carries the same uncertainty, so GTPO's extra credit goes only to planning
tokens that stand out. SEPA is retrain's own stage, not from a paper: it combines GTPO's
uncertainty weighting (Tan et al., 2025, arXiv:2508.04349) with HICRA's split of planning
from execution tokens (Wang et al., 2025, arXiv:2509.03646).

Precision: the pooled values are float64 (about ``2^-52`` relative) and stay float64 into
GTPO, which would otherwise amplify a float32 rounding of them by up to ``beta``.
"""

from __future__ import annotations

import numpy as np

from retrain.config.schema import SEPAConfig
from retrain.registry import register
from retrain.transforms.context import TransformContext, TransformOutput


def sepa_pool(
    uncertainty_N_T: np.ndarray, mask_N_T: np.ndarray, planning_N_T: np.ndarray, sepa_lambda: float
) -> np.ndarray:
    """Pool execution-token uncertainty toward each completion's execution mean (float64).

    Execution tokens are the tokens of ``mask_N_T`` (the sampled ones) that are not
    planning tokens; planning tokens and tokens off the mask keep their values, and a
    completion without execution tokens is returned unchanged. ``uncertainty_N_T`` must
    be finite.
    """
    uncertainty = np.array(uncertainty_N_T, dtype=np.float64)
    if sepa_lambda == 0.0:
        return uncertainty
    execution_N_T = np.asarray(mask_N_T, dtype=bool) & ~np.asarray(planning_N_T, dtype=bool)
    count_N = np.count_nonzero(execution_N_T, axis=1)
    mean_N = (uncertainty * execution_N_T).sum(axis=1) / np.maximum(count_N, 1)
    pooled = uncertainty * (1.0 - sepa_lambda)
    pooled += (sepa_lambda * mean_N)[:, None]
    np.copyto(uncertainty, pooled, where=execution_N_T)
    return uncertainty


@register("transform", params=SEPAConfig, params_section="sepa", needs_planning=True, needs_sepa=True)
def sepa(ctx: TransformContext, params: SEPAConfig) -> TransformOutput:
    """SEPA pooling of execution-token uncertainty by the scheduled lambda (before GTPO).

    ``params`` are the ``[sepa]`` settings of the schedule that sets ``ctx.sepa_lambda``.
    """
    pooled = sepa_pool(ctx.uncertainty_N_T, ctx.mask_N_T, ctx.planning_N_T, ctx.sepa_lambda)
    return TransformOutput(ctx.token_advantages_N_T, uncertainty_N_T=pooled)
