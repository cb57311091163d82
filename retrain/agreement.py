"""Sampler/trainer agreement: the trainer recomputes the log-probability of every served
token and the backend reports how far that lies from the sampler's
(``sampler_logprob_diff_mean`` and ``_max`` in metrics.jsonl, in nats per token).

On-policy (``policy_staleness = 0``) the two should agree up to numerics: about 1e-6
for the same weights and dtype, around 1e-2 between a bf16 server and an fp32 trainer.
A mean above ``MEAN_THRESHOLD`` means the importance ratios are not what the loss
assumes, and is warned about once per run with its usual causes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

logger = logging.getLogger(__name__)

MEAN_THRESHOLD = 0.1


class AgreementWatch:
    """Warns once per run when an on-policy step's sampler/trainer log-probabilities
    disagree (a step observer: it adds no metrics)."""

    name = "agreement"

    def __init__(self, threshold: float = MEAN_THRESHOLD) -> None:
        self.threshold = threshold
        self.warned = False

    def state_dict(self) -> dict[str, object]:
        return {"warned": self.warned}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.warned = bool(state.get("warned", False))

    def observe(self, row: Mapping[str, object]) -> dict[str, float | str]:
        mean = row.get("sampler_logprob_diff_mean")
        if self.warned or not isinstance(mean, float) or not math.isfinite(mean) or row.get("policy_staleness"):
            return {}
        if mean > self.threshold:
            self.warned = True
            logger.warning(
                "step %s: the trainer's log-probabilities of the sampled tokens differ from the sampler's by %.3g "
                "nats per token on average (max %s; expected < %g on-policy). Likely causes: the server samples "
                "at another temperature or reports raw log-probabilities (vLLM: --logprobs-mode processed_logprobs "
                "when temperature != 1), top_p truncation, a different dtype on the server, or the server serving "
                "stale weights", row.get("step"), mean, row.get("sampler_logprob_diff_max"), self.threshold)
        return {}
