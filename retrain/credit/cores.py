"""The two kinds of credit core: composable (an advantage stage, then transform stages)
and a whole algorithm plugin. Both turn rewards and uncertainty into episode and token
advantages on the loss mask."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from retrain.algorithms import AlgorithmContext, AlgorithmOutput
from retrain.credit.stages import Stage, params_view, plugin_metrics
from retrain.plugin_outputs import OutputValidator
from retrain.registry import PluginOutputError
from retrain.transforms import TransformContext, TransformOutput, broadcast_advantages
from retrain.types import SampleBatch


@dataclass(frozen=True)
class CoreInput:
    rewards_P_G: np.ndarray
    batch: SampleBatch
    loss_mask_N_T: np.ndarray
    uncertainty_N_T: np.ndarray
    planning_N_T: np.ndarray
    step: int
    sepa_lambda: float


@dataclass(frozen=True)
class CoreOutput:
    episode_advantages_P_G: np.ndarray
    token_advantages_N_T: np.ndarray
    used_uncertainty_N_T: np.ndarray
    metrics: dict[str, float]


class ComposableCore:
    """The advantage stage, then the transform's stages in order."""

    def __init__(self, advantage: Stage, transform: Stage, stages: list[Stage], validator: OutputValidator) -> None:
        self.advantage = advantage
        self.transform = transform
        self.stages = stages
        self.validator = validator

    def needs(self, what: str) -> bool:
        # An advantage sees only the rewards: what it could need, the stages decide.
        return any(stage.needs(what) for stage in self.stages)

    def describe(self) -> dict[str, object]:
        transform = self.transform.describe()
        transform["stages"] = [{"stage": stage.resolved.name, "description": stage.describe()["description"],
                                "params": params_view(stage.params)} for stage in self.stages]
        return {"advantage": self.advantage.describe(), "transform": transform}

    def __call__(self, core: CoreInput) -> CoreOutput:
        groups, group_size = core.rewards_P_G.shape
        raw = self.advantage(core.rewards_P_G)
        episode_P_G = self.validator.episode(raw, (groups, group_size), self.advantage.label)
        episode_N = episode_P_G.reshape(-1)
        ctx = TransformContext(
            episode_advantages_N=episode_N,
            uncertainty_N_T=core.uncertainty_N_T,
            mask_N_T=core.loss_mask_N_T,
            planning_N_T=core.planning_N_T,
            group_size=group_size,
            step=core.step,
            sepa_lambda=core.sepa_lambda,
            batch=core.batch,
            token_advantages_N_T=broadcast_advantages(episode_N, core.loss_mask_N_T),
        )
        metrics: dict[str, float] = {}
        for stage in self.stages:
            tokens, uncertainty, stage_metrics = self._checked(stage, stage(ctx), ctx)
            ctx = dataclasses.replace(ctx, token_advantages_N_T=tokens, uncertainty_N_T=uncertainty)
            metrics.update(stage_metrics)
        return CoreOutput(episode_P_G, ctx.token_advantages_N_T, ctx.uncertainty_N_T, metrics)

    def _checked(self, stage: Stage, output: object,
                 ctx: TransformContext) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        trusted = stage.resolved.builtin
        uncertainty, metrics = ctx.uncertainty_N_T, {}
        if isinstance(output, TransformOutput):
            if output.uncertainty_N_T is not None:
                uncertainty = self.validator.tokens(output.uncertainty_N_T, ctx.mask_N_T, stage.label + " uncertainty",
                                                    ctx.group_size, trusted=trusted)
            metrics = plugin_metrics(output.metrics, stage.label)
            output = output.token_advantages_N_T
        tokens = self.validator.tokens(output, ctx.mask_N_T, stage.label, ctx.group_size, trusted=trusted)
        return tokens, uncertainty, metrics


class AlgorithmCore:
    """One algorithm plugin computing both episode and token advantages."""

    def __init__(self, algorithm: Stage, validator: OutputValidator) -> None:
        self.algorithm = algorithm
        self.validator = validator

    def needs(self, what: str) -> bool:
        return self.algorithm.needs(what)

    def describe(self) -> dict[str, object]:
        return {"algorithm": self.algorithm.describe()}

    def __call__(self, core: CoreInput) -> CoreOutput:
        groups, group_size = core.rewards_P_G.shape
        ctx = AlgorithmContext(
            rewards_P_G=core.rewards_P_G,
            uncertainty_N_T=core.uncertainty_N_T,
            mask_N_T=core.loss_mask_N_T,
            planning_N_T=core.planning_N_T,
            step=core.step,
            sepa_lambda=core.sepa_lambda,
            batch=core.batch,
        )
        output = self.algorithm(ctx)
        who = self.algorithm.label
        if not isinstance(output, AlgorithmOutput):
            raise PluginOutputError(f"{who} returned {type(output).__name__}; expected an AlgorithmOutput")
        episode_P_G = self.validator.episode(output.episode_advantages, (groups, group_size), who)
        tokens = self.validator.tokens(output.token_advantages, core.loss_mask_N_T, who, group_size)
        used = core.uncertainty_N_T
        if output.uncertainty_N_T is not None:
            used = self.validator.tokens(output.uncertainty_N_T, core.loss_mask_N_T, who + " uncertainty", group_size)
        return CoreOutput(episode_P_G, tokens, used, plugin_metrics(output.metrics, who))


