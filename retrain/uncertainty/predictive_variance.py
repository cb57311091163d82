"""Predictive variance: how undecided the policy was about the token it sampled.

With ``l_t`` the sampler's log-probability of the sampled token::

    p_t = exp(l_t), clamped to [0, 1]
    u_t = p_t (1 - p_t)

the variance of the Bernoulli event "the policy samples this same token again". It needs
only the sampled logprobs, peaks at 1/4 for a coin flip (p = 1/2) and vanishes for a
token the policy was sure of (p -> 1) or that was a long shot (p -> 0).

Numerics: ``1 - exp(l)`` cancels for confident tokens (in float32 it is exactly 0 for
``|l| < 6e-8`` and keeps fewer than four digits below ``|l| = 1e-3``), so the code uses
``1 - p = -expm1(l)``, which keeps every digit. A logprob above 0, as servers return after
rounding, is clamped to 0 (p = 1, u = 0); unclamped it would give a negative variance.
The product is formed in float64 and rounded once to float32, so every value is the
exact ``p (1 - p)`` of its logprob to within a relative 2^-24 (about 6e-8), down to the
smallest normal float32 (1.2e-38); smaller values are subnormal or 0.
"""

from __future__ import annotations

import numpy as np

from retrain.registry import register
from retrain.types import SampleBatch
from retrain.uncertainty.mask import zero_off_mask


@register("uncertainty")
def predictive_variance(batch: SampleBatch) -> np.ndarray:
    """p (1 - p) with p the sampled token's probability."""
    logprobs = np.array(batch.logprobs_N_T, dtype=np.float64)
    np.minimum(logprobs, 0.0, out=logprobs)
    miss_probability = np.negative(np.expm1(logprobs))
    variance = np.exp(logprobs, out=logprobs)
    variance *= miss_probability
    return zero_off_mask(variance.astype(np.float32), batch.loss_mask_N_T)
