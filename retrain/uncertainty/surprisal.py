"""Surprisal: the information content of the sampled token, in nats.

With ``l_t`` the sampler's log-probability of the token it sampled::

    u_t = min(-l_t, 50)

Self-information (Shannon, 1948, "A Mathematical Theory of Communication"). The cap keeps
one near-impossible sample (or a ``-inf`` logprob) from dominating its completion's mean.
A log-probability above 0, which a server can return after rounding, is read as 0: no
probability exceeds 1, so no surprisal is negative.

Exact: negating and clamping a float32 rounds nothing.
"""

from __future__ import annotations

import numpy as np

from retrain.registry import register
from retrain.types import SampleBatch
from retrain.uncertainty.mask import zero_off_mask

SURPRISAL_CAP = 50.0


@register("uncertainty")
def surprisal(batch: SampleBatch) -> np.ndarray:
    """min(-logprob, 50) of the sampled token."""
    values = np.negative(np.asarray(batch.logprobs_N_T, dtype=np.float32))
    np.clip(values, np.float32(0.0), np.float32(SURPRISAL_CAP), out=values)
    return zero_off_mask(values, batch.loss_mask_N_T)
