"""Per-token uncertainty signals that drive the token-level transforms (GTPO, SEPA,
top-rho masking), one module per signal.

Each is a function ``f(batch: SampleBatch) -> float32 [N, T]`` that is 0 on every token
the policy did not sample (padding and environment turns: ``batch.loss_mask_N_T`` is
False there). With ``l_t`` the sampler's log-probability of the sampled token:

- ``surprisal`` (``retrain.uncertainty.surprisal``): ``u_t = min(-l_t, 50)``
- ``predictive_variance`` (``retrain.uncertainty.predictive_variance``):
  ``p_t = exp(l_t)``, ``u_t = p_t (1 - p_t)``
- ``shannon_entropy`` (``retrain.uncertainty.shannon_entropy``):
  ``u_t = -sum_v p(v) log p(v)`` over the full next-token distribution, as the engine
  reports it
"""

from retrain.uncertainty.mask import zero_off_mask
from retrain.uncertainty.predictive_variance import predictive_variance
from retrain.uncertainty.shannon_entropy import shannon_entropy
from retrain.uncertainty.surprisal import SURPRISAL_CAP, surprisal

__all__ = ["SURPRISAL_CAP", "predictive_variance", "shannon_entropy", "surprisal", "zero_off_mask"]
