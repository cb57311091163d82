"""What a token transform receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retrain.types import SampleBatch


@dataclass(frozen=True)
class TransformContext:
    """Everything a token transform sees for one step.

    Per-token arrays are ``[N, T]`` and live on the loss mask: ``mask_N_T`` is the batch's
    ``loss_mask_N_T``, True only on the tokens the policy sampled (never on padding or on
    environment turns). Every other per-token array is 0 (False) off it, means and counts
    are taken over it, and the transform's output is zeroed off it.

    ``episode_advantages_N`` are the float64 episode advantages, flattened prompt-major;
    ``token_advantages_N_T`` the token advantages so far (``A`` on every sampled token
    for the first stage, the previous stage's output inside a composition);
    ``uncertainty_N_T`` the configured uncertainty signal (after SEPA pooling when a
    pooling stage ran first); ``planning_N_T`` is True on sampled planning tokens (all
    False when no stage asked for a planning detector); ``sepa_lambda`` is the SEPA
    schedule's value for this step (0 when no stage declared ``needs_sepa``).
    """

    episode_advantages_N: np.ndarray
    uncertainty_N_T: np.ndarray
    mask_N_T: np.ndarray
    planning_N_T: np.ndarray
    group_size: int
    step: int
    sepa_lambda: float
    batch: SampleBatch
    token_advantages_N_T: np.ndarray


@dataclass(frozen=True)
class TransformOutput:
    """What a transform returns: token advantages, and optionally the uncertainty it
    finally used (e.g. after SEPA pooling) and extra metrics for the step's log."""

    token_advantages_N_T: np.ndarray
    uncertainty_N_T: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def broadcast_advantages(episode_advantages_N: np.ndarray, mask_N_T: np.ndarray) -> np.ndarray:
    """``a_t = A`` on every token of ``mask_N_T``, 0 elsewhere (float32 ``[N, T]``)."""
    advantages = np.asarray(episode_advantages_N, dtype=np.float32)[:, None]
    return advantages * np.asarray(mask_N_T, dtype=bool)
