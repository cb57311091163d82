"""Token-level credit transforms: spread each completion's episode advantage over its tokens.

Per completion with episode advantage ``A``, uncertainty ``u_1..u_T`` and planning mask
``m_1..m_T``, the built-in stages are:

- SEPA pooling (see ``retrain.sepa``): execution tokens' uncertainty is pulled toward the
  completion's execution mean by the scheduled ``lambda``; runs before GTPO.
- GTPO weighting (group token policy optimisation, Tan et al., 2025), strength
  ``beta = [gtpo] beta``: with ``ubar = mean_t(u_t)``, every token gets ``A`` when
  ``beta = 0`` or ``ubar < 1e-7``; otherwise
  ``w_t = max(0, 1 + beta (u_t / (ubar + 1e-8) - 1))`` and ``a_t = A w_t``.
  Uncertain tokens (forks in the reasoning) receive more of the credit.
- HICRA amplification (hierarchy-aware credit assignment, Wang et al., 2025), strength
  ``alpha = [hicra] alpha``, after GTPO: ``a_t <- a_t + alpha |a_t|`` where ``m_t = 1``.
  It pushes planning tokens up (never flips a sign): a correct plan is reinforced more,
  a wrong plan is penalised less.

``transform_mode`` names are compositions of these stages, applied in order:
``none`` = (), ``gtpo`` = (gtpo), ``hicra`` = (hicra), ``gtpo_hicra`` = (gtpo, hicra),
``gtpo_sepa`` = (sepa, gtpo), ``gtpo_sepa_hicra`` = (sepa, gtpo, hicra).

Optional top-rho masking (``[algorithm] surprisal_mask_rho``, after the transform) keeps
token advantages only on the ``ceil(rho n)`` most uncertain of the ``n`` tokens of each
group (ties at the threshold are kept); ``rho = 0`` turns it off.

Everything works on padded ``[N, T]`` float32 arrays; padding carries 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from retrain.config.schema import Config
from retrain.sepa import sepa_pool
from retrain.types import SampleBatch

GTPO_MEAN_FLOOR = 1e-7
GTPO_EPS = 1e-8


@dataclass(frozen=True)
class TransformContext:
    """Everything a token transform sees for one step.

    ``episode_advantages_N`` are the episode advantages flattened prompt-major;
    ``uncertainty_N_T`` is the configured uncertainty signal (0 on padding);
    ``planning_N_T`` is True on planning tokens (all False when no stage asked for a
    planning detector); ``sepa_lambda`` is the SEPA schedule's value for this step.
    """

    episode_advantages_N: np.ndarray
    uncertainty_N_T: np.ndarray
    mask_N_T: np.ndarray
    planning_N_T: np.ndarray
    group_size: int
    step: int
    sepa_lambda: float
    batch: SampleBatch


@dataclass(frozen=True)
class TransformOutput:
    """What a transform returns: token advantages, and optionally the uncertainty it
    finally used (e.g. after SEPA pooling) and extra metrics for the step's log."""

    token_advantages_N_T: np.ndarray
    uncertainty_N_T: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def broadcast_advantages(episode_advantages_N: np.ndarray, mask_N_T: np.ndarray) -> np.ndarray:
    """``a_t = A`` on every real token, 0 on padding (float32 ``[N, T]``)."""
    advantages = np.asarray(episode_advantages_N, dtype=np.float32)[:, None]
    return advantages * np.asarray(mask_N_T, dtype=bool)


def gtpo_weights(uncertainty_N_T: np.ndarray, mask_N_T: np.ndarray, beta: float) -> np.ndarray:
    """GTPO token weights ``w_t = max(0, 1 + beta (u_t / (ubar + 1e-8) - 1))``.

    ``ubar`` is the mean over each completion's real tokens. Completions with
    ``ubar < 1e-7`` (and every completion when ``beta = 0``) get weight 1; padding gets
    0. ``uncertainty_N_T`` must be finite and 0 on padding (as every stage provides it).
    """
    mask = np.asarray(mask_N_T, dtype=bool)
    if beta == 0.0:
        return mask.astype(np.float32)
    uncertainty = np.asarray(uncertainty_N_T, dtype=np.float32)
    count_N = np.count_nonzero(mask, axis=1)
    mean_N = uncertainty.sum(axis=1, dtype=np.float64) / np.maximum(count_N, 1)
    # 1 + beta (u / m - 1) = (beta / m) u + (1 - beta): one scaled copy and two in-place passes.
    scale_N = (beta / (mean_N + GTPO_EPS)).astype(np.float32)
    weights = uncertainty * scale_N[:, None]
    weights += np.float32(1.0 - beta)
    np.maximum(weights, np.float32(0.0), out=weights)
    weights[mean_N < GTPO_MEAN_FLOOR] = 1.0
    weights *= mask
    return weights


def hicra_amplify(token_advantages_N_T: np.ndarray, planning_N_T: np.ndarray, alpha: float) -> np.ndarray:
    """``a_t + alpha |a_t|`` on planning tokens; other tokens unchanged.

    ``token_advantages_N_T`` must be finite.
    """
    advantages = np.asarray(token_advantages_N_T, dtype=np.float32)
    if alpha == 0.0:
        return advantages.copy()
    # Adding exactly 0 off the planning tokens leaves them bit-identical.
    boost = np.abs(advantages)
    boost *= np.float32(alpha)
    boost *= np.asarray(planning_N_T, dtype=bool)
    boost += advantages
    return boost


@dataclass(frozen=True)
class RhoMask:
    """Result of top-rho masking: which tokens keep their advantage, and its summary."""

    keep_N_T: np.ndarray
    mean_threshold: float
    masked_fraction: float


def top_rho_mask(uncertainty_N_T: np.ndarray, mask_N_T: np.ndarray, group_size: int, rho: float) -> RhoMask:
    """Keep the ``ceil(rho n)`` most uncertain of the ``n`` real tokens of each group.

    The threshold of a group is the ``ceil(rho n)``-th largest uncertainty; every token
    at or above it is kept (so ties can keep a few more). ``mean_threshold`` averages
    the thresholds of the groups that have tokens; ``masked_fraction`` is the share of
    real tokens dropped.
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


# ---------------------------------------------------------------------------------------
# Stages and their compositions


@dataclass(frozen=True)
class TokenState:
    """The two arrays the stages rewrite: uncertainty (SEPA) and token advantages."""

    uncertainty_N_T: np.ndarray
    token_advantages_N_T: np.ndarray


@dataclass(frozen=True)
class SEPAPooling:
    """Pool execution-token uncertainty by the scheduled lambda (before GTPO)."""

    name = "sepa"
    needs_planning = True

    def apply(self, state: TokenState, ctx: TransformContext) -> TokenState:
        pooled = sepa_pool(state.uncertainty_N_T, ctx.mask_N_T, ctx.planning_N_T, ctx.sepa_lambda)
        return TokenState(pooled, state.token_advantages_N_T)

    def params(self) -> dict[str, object]:
        return {"lambda": "scheduled by [sepa]"}


@dataclass(frozen=True)
class GTPOWeighting:
    """Multiply token advantages by the GTPO uncertainty weights."""

    beta: float
    name = "gtpo"
    needs_planning = False

    def apply(self, state: TokenState, ctx: TransformContext) -> TokenState:
        weights = gtpo_weights(state.uncertainty_N_T, ctx.mask_N_T, self.beta)
        return TokenState(state.uncertainty_N_T, state.token_advantages_N_T * weights)

    def params(self) -> dict[str, object]:
        return {"beta": self.beta}


@dataclass(frozen=True)
class HICRAAmplification:
    """Amplify planning tokens' advantages by ``alpha |a_t|`` (after GTPO)."""

    alpha: float
    name = "hicra"
    needs_planning = True

    def apply(self, state: TokenState, ctx: TransformContext) -> TokenState:
        amplified = hicra_amplify(state.token_advantages_N_T, ctx.planning_N_T, self.alpha)
        return TokenState(state.uncertainty_N_T, amplified)

    def params(self) -> dict[str, object]:
        return {"alpha": self.alpha}


Stage = SEPAPooling | GTPOWeighting | HICRAAmplification


def stage_from_config(name: str, config: Config) -> Stage:
    """Build one built-in stage with its setting from the config."""
    if name == "sepa":
        return SEPAPooling()
    if name == "gtpo":
        return GTPOWeighting(beta=config.gtpo.beta)
    if name == "hicra":
        return HICRAAmplification(alpha=config.hicra.alpha)
    raise ValueError(f"unknown transform stage {name!r}")


class ComposedTransform:
    """Apply stages in order, starting from ``a_t = A`` and the raw uncertainty."""

    stage_names: tuple[str, ...] = ()

    def __init__(self, config: Config | None = None, stages: Sequence[Stage] | None = None) -> None:
        if stages is None:
            config = config if config is not None else Config()
            stages = [stage_from_config(name, config) for name in self.stage_names]
        self.stages: tuple[Stage, ...] = tuple(stages)

    @property
    def needs_planning(self) -> bool:
        return any(stage.needs_planning for stage in self.stages)

    def describe(self) -> list[dict[str, object]]:
        return [{"stage": stage.name, "params": stage.params()} for stage in self.stages]

    def __call__(self, ctx: TransformContext) -> TransformOutput:
        state = TokenState(
            uncertainty_N_T=np.asarray(ctx.uncertainty_N_T, dtype=np.float32),
            token_advantages_N_T=broadcast_advantages(ctx.episode_advantages_N, ctx.mask_N_T),
        )
        for stage in self.stages:
            state = stage.apply(state, ctx)
        return TransformOutput(token_advantages_N_T=state.token_advantages_N_T, uncertainty_N_T=state.uncertainty_N_T)


class NoTransform(ComposedTransform):
    """Every token gets the episode advantage."""

    stage_names = ()


class GTPOTransform(ComposedTransform):
    """GTPO uncertainty weighting."""

    stage_names = ("gtpo",)


class HICRATransform(ComposedTransform):
    """HICRA planning-token amplification of the episode advantage."""

    stage_names = ("hicra",)


class GTPOHICRATransform(ComposedTransform):
    """GTPO weighting, then HICRA amplification."""

    stage_names = ("gtpo", "hicra")


class GTPOSEPATransform(ComposedTransform):
    """SEPA pooling, then GTPO weighting."""

    stage_names = ("sepa", "gtpo")


class GTPOSEPAHICRATransform(ComposedTransform):
    """SEPA pooling, GTPO weighting, then HICRA amplification."""

    stage_names = ("sepa", "gtpo", "hicra")
