"""Miss probability as the uncertainty signal (an example uncertainty plugin).

With ``p_t = exp(l_t)`` the sampler's probability of the token it sampled, the signal
is the probability mass the policy put on every other token::

    u_t = 1 - p_t

It lies in [0, 1], grows with surprisal (``1 - exp(-s)``) but saturates instead of
reaching 50, and needs only the sampled logprobs. Use it with::

    [algorithm]
    uncertainty_kind = "miss_probability.miss_probability"
"""

from __future__ import annotations

import numpy as np

from retrain.plugin_api import SampleBatch, register


@register("uncertainty")
def miss_probability(batch: SampleBatch) -> np.ndarray:
    """1 - p of the sampled token, 0 on tokens the policy did not sample."""
    # -expm1(l) is 1 - exp(l) without the cancellation that zeroes it for confident tokens.
    miss = -np.expm1(np.minimum(np.asarray(batch.logprobs_N_T, dtype=np.float32), np.float32(0.0)))
    return np.where(np.asarray(batch.loss_mask_N_T, dtype=bool), miss, np.float32(0.0))
