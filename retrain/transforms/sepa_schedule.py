"""The SEPA schedule: the per-step lambda of SEPA pooling (``retrain.transforms.sepa``).

``lambda`` changes once per step, for the whole batch (``[sepa]`` settings):

- ``linear``: ``lambda(step) = clamp((step - delay_steps) / steps, 0, 1)``.
- ``auto``: also follows the decay of the execution-token uncertainty variance. Each
  step's variance (before pooling, over all sampled execution tokens of the batch) feeds
  an EMA ``v``; the mean of the first ``warmup_steps`` variances fixes the reference
  ``v_0``; after the warm-up ``lambda = max(lambda_linear, 1 - min(v / v_0 / threshold, 1))``.
  A step without execution tokens has no variance and leaves the EMA alone.
- A correctness gate holds ``lambda = 0`` until a batch's correct rate reaches
  ``correct_rate_gate``; from then on the gate stays open for good.

The credit pipeline runs the schedule only when one of its stages declares
``needs_sepa`` (the SEPA pooling stage does). Its state is plain JSON (``state_dict`` /
``load_state_dict``), so a resumed run continues the schedule exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from retrain.config.schema import SEPAConfig
from retrain.errors import RetrainError


class SEPAController:
    """The per-step SEPA schedule: linear or auto, behind a sticky correctness gate."""

    def __init__(self, settings: SEPAConfig) -> None:
        self.settings = settings
        self.gate_open = False
        self.variance_ema: float | None = None
        self.reference_variance: float | None = None
        self.warmup_sum = 0.0
        self.observed_steps = 0
        self.last_lambda = 0.0

    def linear_lambda(self, step: int) -> float:
        """``clamp((step - delay_steps) / steps, 0, 1)``."""
        ramp = (step - self.settings.delay_steps) / self.settings.steps
        return min(max(ramp, 0.0), 1.0)

    def auto_lambda(self) -> float:
        """``1 - min(v / v_0 / threshold, 1)`` after the warm-up, else 0."""
        if self.reference_variance is None or self.variance_ema is None or self.reference_variance <= 0.0:
            # A reference variance of 0 means execution uncertainty never varied: there is
            # no decay to follow, so only the linear ramp applies.
            return 0.0
        ratio = self.variance_ema / self.reference_variance / self.settings.variance_threshold
        return 1.0 - min(ratio, 1.0)

    def observe_variance(self, variance: float) -> None:
        """Feed one step's execution-token uncertainty variance to the auto schedule."""
        if not math.isfinite(variance):
            return
        decay = self.settings.ema_decay
        self.variance_ema = variance if self.variance_ema is None else decay * self.variance_ema + (1.0 - decay) * variance
        self.observed_steps += 1
        if self.reference_variance is None:
            self.warmup_sum += variance
            if self.observed_steps >= self.settings.warmup_steps:
                self.reference_variance = self.warmup_sum / self.observed_steps

    def update(self, step: int, correct_rate: float, execution_variance: float) -> float:
        """Advance the schedule by one step and return this step's lambda."""
        if correct_rate >= self.settings.correct_rate_gate:
            self.gate_open = True
        if self.settings.schedule == "auto":
            self.observe_variance(execution_variance)
        if not self.gate_open:
            self.last_lambda = 0.0
        elif self.settings.schedule == "auto":
            self.last_lambda = max(self.linear_lambda(step), self.auto_lambda())
        else:
            self.last_lambda = self.linear_lambda(step)
        return self.last_lambda

    def state_dict(self) -> dict[str, object]:
        return {
            "gate_open": self.gate_open,
            "variance_ema": self.variance_ema,
            "reference_variance": self.reference_variance,
            "warmup_sum": self.warmup_sum,
            "observed_steps": self.observed_steps,
            "last_lambda": self.last_lambda,
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            missing = sorted(expected - set(state))
            extra = sorted(set(state) - expected)
            raise RetrainError(
                f"the saved SEPA state does not match this version (missing {missing}, unexpected {extra}); "
                "resume from a checkpoint written by the same retrain version"
            )
        self.gate_open = bool(state["gate_open"])
        self.variance_ema = None if state["variance_ema"] is None else _saved_number(state, "variance_ema")
        self.reference_variance = (
            None if state["reference_variance"] is None else _saved_number(state, "reference_variance")
        )
        self.warmup_sum = _saved_number(state, "warmup_sum")
        self.observed_steps = int(_saved_number(state, "observed_steps"))
        self.last_lambda = _saved_number(state, "last_lambda")


def _saved_number(state: Mapping[str, object], key: str) -> float:
    """``state[key]`` as a float, refusing anything that is not a number (a damaged checkpoint)."""
    value = state[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RetrainError(f"the saved SEPA state has {key} = {value!r}, not a number; the checkpoint is damaged — "
                           "resume from an earlier checkpoint")
    return float(value)
