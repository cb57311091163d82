"""Shannon entropy of the policy's full next-token distribution at each sampled position.

With ``p(v)`` the probability the policy gave every vocabulary token ``v`` at position t::

    u_t = -sum_v p(v) log p(v)

(Shannon, 1948, "A Mathematical Theory of Communication"). Unlike surprisal and
predictive variance it describes the whole distribution, not the one token drawn, so
only an engine that sees the full distribution can compute it: the in-process pytorch
engine fills ``SampleBatch.entropies_N_T``, and this stage reads those values (float32,
unchanged).
"""

from __future__ import annotations

import numpy as np

from retrain.errors import EngineError
from retrain.registry import register
from retrain.types import SampleBatch
from retrain.uncertainty.mask import zero_off_mask


@register("uncertainty", needs_entropies=True)
def shannon_entropy(batch: SampleBatch) -> np.ndarray:
    """Entropy of the full next-token distribution (in-process engine only)."""
    if batch.entropies_N_T is None:
        raise EngineError(
            "uncertainty_kind = \"shannon_entropy\" needs per-token entropies, but the inference engine returned "
            "none for this batch — use the in-process engine ([inference] engine = \"pytorch\" with "
            "[backend] backend = \"local\"), or choose uncertainty_kind = \"surprisal\" or \"predictive_variance\""
        )
    entropies = np.asarray(batch.entropies_N_T, dtype=np.float32)
    if entropies.shape != np.shape(batch.loss_mask_N_T):
        raise EngineError(
            f"the engine returned entropies of shape {entropies.shape} for tokens of shape "
            f"{np.shape(batch.loss_mask_N_T)}; they must match (one entropy per token position)"
        )
    return zero_off_mask(entropies.copy(), batch.loss_mask_N_T)
