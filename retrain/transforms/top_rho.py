"""Top-rho masking: keep token advantages only on a group's most uncertain tokens.

With ``rho = [algorithm] surprisal_mask_rho`` and the ``n`` sampled tokens of one
group (all G completions of a prompt), after the transform::

    k     = ceil(rho n)
    tau   = the k-th largest u_t of the group
    a_t  <- a_t   where u_t >= tau      (ties at tau are kept)
    a_t  <- 0     elsewhere

``rho = 0`` turns masking off, ``rho = 1`` keeps everything. It follows Wang et al., 2025,
"Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement
Learning for LLM Reasoning" (arXiv:2506.01939), which trains only on the highest-entropy
tokens; here the cut is per group and on the configured uncertainty signal. Exact: it
compares and selects, rounding nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RhoMask:
    """Result of top-rho masking: which tokens keep their advantage, and its summary."""

    keep_N_T: np.ndarray
    mean_threshold: float
    masked_fraction: float


def top_rho_mask(uncertainty_N_T: np.ndarray, mask_N_T: np.ndarray, group_size: int, rho: float) -> RhoMask:
    """Keep the ``ceil(rho n)`` most uncertain of the ``n`` tokens of ``mask_N_T`` (the
    sampled tokens) in each group.

    The threshold of a group is the ``ceil(rho n)``-th largest uncertainty; every token
    at or above it is kept (so ties can keep a few more). ``mean_threshold`` averages
    the thresholds of the groups that have tokens; ``masked_fraction`` is the share of
    the masked-in tokens dropped.
    """
    mask = np.asarray(mask_N_T, dtype=bool)
    if rho <= 0.0:
        return RhoMask(keep_N_T=mask.copy(), mean_threshold=0.0, masked_fraction=0.0)
    uncertainty = np.asarray(uncertainty_N_T, dtype=np.float32)
    num_rows, width = mask.shape
    groups = num_rows // group_size
    values_P_GT = uncertainty.reshape(groups, group_size * width)
    mask_P_GT = mask.reshape(groups, group_size * width)
    thresholds_P = np.full(groups, -np.inf, dtype=np.float32)
    thresholds = []
    # One partial sort per prompt group (P of them), never a loop over tokens.
    for group in range(groups):
        values = values_P_GT[group][mask_P_GT[group]]
        if values.size == 0:
            continue
        # round() first: rho * n can land a hair above an integer (0.3 * 10).
        keep_count = math.ceil(round(rho * values.size, 9))
        cut = values.size - keep_count
        thresholds_P[group] = np.partition(values, cut)[cut]
        thresholds.append(float(thresholds_P[group]))
    keep_N_T = mask & (uncertainty >= np.repeat(thresholds_P, group_size)[:, None])
    total = int(mask.sum())
    masked_fraction = 1.0 - int(keep_N_T.sum()) / total if total else 0.0
    return RhoMask(
        keep_N_T=keep_N_T,
        mean_threshold=float(np.mean(thresholds)) if thresholds else 0.0,
        masked_fraction=masked_fraction,
    )
