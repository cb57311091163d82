"""Per-token uncertainty signals that drive the token-level transforms (GTPO, SEPA, top-rho).

Each function takes the step's ``SampleBatch`` and returns a float32 ``[N, T]`` array that
is 0 on padding. With ``l_t`` the sampler's log-probability of the sampled token:

- ``surprisal``: ``u_t = min(-l_t, 50)``; the cap keeps a near-impossible sample (or a
  ``-inf`` logprob) from dominating a completion's mean.
- ``predictive_variance``: ``p_t = exp(l_t)``, ``u_t = p_t (1 - p_t)``, the variance of the
  Bernoulli "was this token sampled" under the policy; it needs only sampled logprobs.
- ``shannon_entropy``: ``u_t = -sum_v p(v) log p(v)`` over the whole next-token
  distribution. Only an engine that sees the full distribution can compute it (the
  in-process pytorch engine fills ``SampleBatch.entropies_N_T``); this stage reads it.
"""

from __future__ import annotations

import numpy as np

from retrain.errors import EngineError
from retrain.types import SampleBatch

SURPRISAL_CAP = 50.0


def zero_padding(values_N_T: np.ndarray, mask_N_T: np.ndarray) -> np.ndarray:
    """``values`` with padding set to 0, in place (whatever padding held, even NaN)."""
    np.copyto(values_N_T, np.float32(0.0), where=~np.asarray(mask_N_T, dtype=bool))
    return values_N_T


def surprisal(batch: SampleBatch) -> np.ndarray:
    """``min(-logprob, 50)`` on real tokens, 0 on padding."""
    values = np.negative(np.asarray(batch.logprobs_N_T, dtype=np.float32))
    np.minimum(values, np.float32(SURPRISAL_CAP), out=values)
    return zero_padding(values, batch.mask_N_T)


def predictive_variance(batch: SampleBatch) -> np.ndarray:
    """``p (1 - p)`` with ``p = exp(logprob)`` on real tokens, 0 on padding."""
    probabilities = np.exp(np.asarray(batch.logprobs_N_T, dtype=np.float32))
    values = np.subtract(np.float32(1.0), probabilities)
    values *= probabilities
    return zero_padding(values, batch.mask_N_T)


def shannon_entropy(batch: SampleBatch) -> np.ndarray:
    """The engine-supplied entropy of the full next-token distribution, 0 on padding."""
    if batch.entropies_N_T is None:
        raise EngineError(
            "uncertainty_kind = \"shannon_entropy\" needs per-token entropies, but the inference engine returned "
            "none for this batch — use the in-process engine ([inference] engine = \"pytorch\" with "
            "[backend] backend = \"local\"), or choose uncertainty_kind = \"surprisal\" or \"predictive_variance\""
        )
    entropies = np.asarray(batch.entropies_N_T, dtype=np.float32)
    if entropies.shape != np.shape(batch.mask_N_T):
        raise EngineError(
            f"the engine returned entropies of shape {entropies.shape} for tokens of shape "
            f"{np.shape(batch.mask_N_T)}; they must match (one entropy per sampled token)"
        )
    return zero_padding(entropies.copy(), batch.mask_N_T)
