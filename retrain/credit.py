"""The credit-assignment pipeline: rewards and samples in, token advantages out.

One call per step, on whole arrays::

    rewards_P_G ── advantage ──▶ episode advantages A (GRPO, MaxRL or a plugin)
    batch       ── uncertainty ─▶ u_N_T (surprisal, predictive_variance, shannon_entropy or a plugin)
    SEPA schedule (per step, driven here: gate on the batch's correct rate, linear/auto lambda)
    A, u, planning mask ── transform ─▶ token advantages a_N_T (composed GTPO/HICRA/SEPA stages or a plugin)
    optional top-rho masking of a_N_T by u (per group)

An ``algorithm_mode`` plugin replaces the advantage and transform stages with one
function. Every stage's output is validated (shape, per-sequence length, finite values):
with ``[plugins] strict = true`` a problem raises ``PluginOutputError`` naming the stage,
the sequence and the token; with ``strict = false`` safe repairs are made (non-finite
values become 0, a sequence of the wrong length is padded with 0 or truncated), logged
as warnings and counted in the metrics.

Metrics (keys of ``CreditResult.metrics``):

- ``groups_total``, ``groups_informative``, ``groups_all_correct``, ``groups_all_wrong``,
  ``groups_other_ties`` (uniform-reward groups by cause), ``correct_rate``;
- ``advantage_mean``, ``advantage_std`` (episode advantages), ``token_advantage_mean``,
  ``token_advantage_std`` (over real tokens), ``tokens_total``, ``planning_token_fraction``;
- ``uncertainty_mean``, ``uncertainty_std``, ``uncertainty_max`` (raw signal, real tokens);
- ``sepa_lambda``, ``sepa_gate_open`` (1.0 or 0.0);
- ``exec_uncertainty_mean``, ``exec_uncertainty_var``, ``planning_uncertainty_mean``,
  ``planning_uncertainty_var`` before pooling, and the same with ``_pooled`` after it;
- ``rho_threshold``, ``rho_masked_fraction`` when ``surprisal_mask_rho > 0``;
- ``plugin_repaired_values``, ``plugin_repaired_sequences`` (non-strict repairs this step);
- plus any metrics a transform or algorithm plugin returns.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrain.advantages import GroupStats, correct_rate, group_stats
from retrain.algorithms import AlgorithmContext, AlgorithmOutput, Recipe
from retrain.config.schema import Config
from retrain.errors import PluginError, RetrainError
from retrain.plugin_outputs import OutputValidator
from retrain.registry import PluginOutputError, ResolvedPlugin, check_params, resolve
from retrain.sepa import SEPAController
from retrain.transforms import (
    ComposedTransform,
    TransformContext,
    TransformOutput,
    top_rho_mask,
)
from retrain.types import CreditResult, SampleBatch

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# The two kinds of core: composable (advantage + transform) and a whole algorithm plugin


@dataclass(frozen=True)
class CoreInput:
    rewards_P_G: np.ndarray
    batch: SampleBatch
    mask_N_T: np.ndarray
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


def _label(resolved: ResolvedPlugin) -> str:
    return f"{resolved.kind} '{resolved.name}' ({resolved.origin})"


def _call(plugin: ResolvedPlugin, *args: object) -> object:
    """Run a stage. An exception inside a user's plugin becomes a ``PluginError`` naming
    the plugin (``RETRAIN_DEBUG=1`` shows its traceback); a built-in's is a bug in
    retrain and keeps its traceback."""
    if plugin.builtin:
        return plugin.obj(*args)  # type: ignore[operator]
    try:
        return plugin.obj(*args)  # type: ignore[operator]
    except RetrainError:
        raise
    except Exception as exc:
        raise PluginError(f"{_label(plugin)} raised {type(exc).__name__}: {exc} — fix the plugin "
                          "(RETRAIN_DEBUG=1 shows where)") from exc


def _params_view(params: object) -> object:
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return dataclasses.asdict(params)
    if isinstance(params, Mapping):
        return dict(params)
    return params


def _plugin_metrics(metrics: object, who: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise PluginOutputError(f"{who} returned metrics of type {type(metrics).__name__}; expected a dict of numbers")
    try:
        return {str(key): float(value) for key, value in metrics.items()}
    except (TypeError, ValueError) as exc:
        raise PluginOutputError(f"{who} returned a metric that is not a number: {exc}") from exc


class ComposableCore:
    """Advantage stage then transform stage (built-ins or plugins)."""

    def __init__(self, advantage: ResolvedPlugin, advantage_params: object, transform: ResolvedPlugin,
                 transform_params: object, config: Config, validator: OutputValidator) -> None:
        self.advantage = advantage
        self.advantage_params = advantage_params
        self.transform = transform
        self.transform_params = transform_params
        self.validator = validator
        if transform.builtin:
            composed: ComposedTransform = transform.obj(config)
            self.stages = composed.describe()
            self.needs_planning = composed.needs_planning
            self.run_transform: Callable[[TransformContext], object] = composed
        else:
            self.stages = []
            self.needs_planning = transform.spec.needs_planning if transform.spec is not None else True
            self.run_transform = lambda ctx: _call(transform, ctx, transform_params)

    @property
    def needs_entropies(self) -> bool:
        return any(r.spec is not None and r.spec.needs_entropies for r in (self.advantage, self.transform))

    def describe(self) -> dict[str, object]:
        return {
            "advantage": {"name": self.advantage.name, "origin": self.advantage.origin,
                          "params": _params_view(self.advantage_params)},
            "transform": {"name": self.transform.name, "origin": self.transform.origin,
                          "stages": self.stages, "params": _params_view(self.transform_params)},
        }

    def __call__(self, core: CoreInput) -> CoreOutput:
        groups, group_size = core.rewards_P_G.shape
        raw = _call(self.advantage, core.rewards_P_G, self.advantage_params)
        episode_P_G = self.validator.episode(raw, (groups, group_size), _label(self.advantage))
        ctx = TransformContext(
            episode_advantages_N=episode_P_G.reshape(-1).astype(np.float32),
            uncertainty_N_T=core.uncertainty_N_T,
            mask_N_T=core.mask_N_T,
            planning_N_T=core.planning_N_T,
            group_size=group_size,
            step=core.step,
            sepa_lambda=core.sepa_lambda,
            batch=core.batch,
        )
        output = self.run_transform(ctx)
        who = _label(self.transform)
        used = core.uncertainty_N_T
        metrics: dict[str, float] = {}
        if isinstance(output, TransformOutput):
            if output.uncertainty_N_T is not None:
                used = self.validator.tokens(output.uncertainty_N_T, core.mask_N_T, who + " uncertainty", group_size,
                                             trusted=self.transform.builtin)
            metrics = _plugin_metrics(output.metrics, who)
            output = output.token_advantages_N_T
        tokens = self.validator.tokens(output, core.mask_N_T, who, group_size, trusted=self.transform.builtin)
        return CoreOutput(episode_P_G, tokens, used, metrics)


class AlgorithmCore:
    """One algorithm plugin computing both episode and token advantages."""

    def __init__(self, algorithm: ResolvedPlugin, params: object, validator: OutputValidator) -> None:
        self.algorithm = algorithm
        self.params = params
        self.validator = validator
        self.needs_planning = algorithm.spec.needs_planning if algorithm.spec is not None else True

    @property
    def needs_entropies(self) -> bool:
        return self.algorithm.spec is not None and self.algorithm.spec.needs_entropies

    def describe(self) -> dict[str, object]:
        return {"algorithm": {"name": self.algorithm.name, "origin": self.algorithm.origin,
                              "params": _params_view(self.params)}}

    def __call__(self, core: CoreInput) -> CoreOutput:
        groups, group_size = core.rewards_P_G.shape
        ctx = AlgorithmContext(
            rewards_P_G=core.rewards_P_G,
            uncertainty_N_T=core.uncertainty_N_T,
            mask_N_T=core.mask_N_T,
            planning_N_T=core.planning_N_T,
            step=core.step,
            sepa_lambda=core.sepa_lambda,
            batch=core.batch,
        )
        output = _call(self.algorithm, ctx, self.params)
        who = _label(self.algorithm)
        if not isinstance(output, AlgorithmOutput):
            raise PluginOutputError(f"{who} returned {type(output).__name__}; expected an AlgorithmOutput")
        episode_P_G = self.validator.episode(output.episode_advantages, (groups, group_size), who)
        tokens = self.validator.tokens(output.token_advantages, core.mask_N_T, who, group_size)
        used = core.uncertainty_N_T
        if output.uncertainty_N_T is not None:
            used = self.validator.tokens(output.uncertainty_N_T, core.mask_N_T, who + " uncertainty", group_size)
        return CoreOutput(episode_P_G, tokens, used, _plugin_metrics(output.metrics, who))


# ---------------------------------------------------------------------------------------
# The pipeline


@dataclass(frozen=True)
class Selector:
    """A token subset as a float32 0/1 array (multiplying by it is several times faster
    than by a bool array) with its size."""

    weights_N_T: np.ndarray
    count: int

    @classmethod
    def of(cls, chosen_N_T: np.ndarray) -> Selector:
        return cls(chosen_N_T.astype(np.float32), int(np.count_nonzero(chosen_N_T)))


def _mean_var(values_N_T: np.ndarray, selector: Selector) -> tuple[float, float]:
    """Mean and variance of the selected (finite) values; (0, 0) when none is selected.

    Two passes (mean, then squared deviations) keep a small variance accurate, which
    matters for the pooled execution uncertainty that SEPA drives toward 0.
    """
    if selector.count == 0:
        return 0.0, 0.0
    mean = float((values_N_T * selector.weights_N_T).sum(dtype=np.float64)) / selector.count
    deviations = values_N_T - np.float32(mean)
    deviations *= selector.weights_N_T
    np.square(deviations, out=deviations)
    # numpy's pairwise float32 summation is accurate enough here and several times
    # faster than a float64 copy.
    return mean, float(deviations.sum()) / selector.count


class CreditPipeline:
    """Resolved, validated credit assignment; call it once per step."""

    def __init__(self, core: ComposableCore | AlgorithmCore, uncertainty: ResolvedPlugin, config: Config,
                 validator: OutputValidator, recipe: str = "") -> None:
        self.core = core
        self.uncertainty = uncertainty
        self.config = config
        self.validator = validator
        self.recipe = recipe
        self.rho = config.algorithm.surprisal_mask_rho
        self.sepa = SEPAController(config.sepa)

    @property
    def needs_planning(self) -> bool:
        """Whether a stage reads the planning mask (otherwise the caller may pass None)."""
        return self.core.needs_planning

    @property
    def needs_entropies(self) -> bool:
        """Whether the engine must return per-token entropies."""
        own = self.uncertainty.name == "shannon_entropy" or (
            self.uncertainty.spec is not None and self.uncertainty.spec.needs_entropies
        )
        return own or self.core.needs_entropies

    def describe(self) -> dict[str, object]:
        """The resolved pipeline, for ``retrain explain``."""
        sepa = self.config.sepa
        description: dict[str, object] = {
            "mode": "algorithm" if isinstance(self.core, AlgorithmCore) else "composable",
            "recipe": self.recipe,
            "uncertainty": {"name": self.uncertainty.name, "origin": self.uncertainty.origin},
        }
        description.update(self.core.describe())
        description.update({
            "surprisal_mask_rho": self.rho,
            "sepa": {"schedule": sepa.schedule, "steps": sepa.steps, "delay_steps": sepa.delay_steps,
                     "correct_rate_gate": sepa.correct_rate_gate},
            "strict": self.validator.strict,
            "needs_planning": self.needs_planning,
            "needs_entropies": self.needs_entropies,
        })
        return description

    def __call__(self, rewards_P_G: np.ndarray, batch: SampleBatch, planning_N_T: np.ndarray | None,
                 step: int) -> CreditResult:
        self.validator.reset()
        rewards = np.asarray(rewards_P_G, dtype=np.float64)
        mask = np.asarray(batch.mask_N_T, dtype=bool)
        _check_batch(rewards, mask, batch.group_size)
        groups, group_size = rewards.shape
        planning = _planning_mask(planning_N_T, mask)
        uncertainty = self.validator.tokens(_call(self.uncertainty, batch), mask, _label(self.uncertainty), group_size,
                                            trusted=self.uncertainty.builtin)
        selectors = {"real": Selector.of(mask), "exec": Selector.of(mask & ~planning), "planning": Selector.of(planning)}
        rate = correct_rate(rewards)
        raw = {name: _mean_var(uncertainty, selectors[name]) for name in ("exec", "planning")}
        exec_variance = raw["exec"][1] if selectors["exec"].count else float("nan")
        sepa_lambda = self.sepa.update(step, rate, exec_variance)
        core = self.core(CoreInput(rewards, batch, mask, uncertainty, planning, step, sepa_lambda))
        tokens = core.token_advantages_N_T
        stats = group_stats(rewards)
        metrics = self._metrics(rewards, stats, core, uncertainty, selectors, rate, raw)
        if self.rho > 0.0:
            rho = top_rho_mask(uncertainty, mask, group_size, self.rho)
            tokens = tokens * rho.keep_N_T
            metrics["rho_threshold"] = rho.mean_threshold
            metrics["rho_masked_fraction"] = rho.masked_fraction
        metrics["plugin_repaired_values"] = float(self.validator.repaired_values)
        metrics["plugin_repaired_sequences"] = float(self.validator.repaired_sequences)
        return CreditResult(
            episode_advantages_N=core.episode_advantages_P_G.reshape(-1),
            token_advantages_N_T=tokens,
            uncertainty_N_T=uncertainty,
            informative_P=stats.informative_P,
            metrics=metrics,
        )

    def _metrics(self, rewards: np.ndarray, stats: GroupStats, core: CoreOutput, uncertainty: np.ndarray,
                 selectors: dict[str, Selector], rate: float, raw: dict[str, tuple[float, float]]) -> dict[str, float]:
        episode = core.episode_advantages_P_G
        token_mean, token_var = _mean_var(core.token_advantages_N_T, selectors["real"])
        u_mean, u_var = _mean_var(uncertainty, selectors["real"])
        tokens_total = selectors["real"].count
        metrics = {
            "groups_total": float(rewards.shape[0]),
            "groups_informative": float(stats.informative_P.sum()),
            "groups_all_correct": float(stats.all_correct),
            "groups_all_wrong": float(stats.all_wrong),
            "groups_other_ties": float(stats.other_ties),
            "correct_rate": rate,
            "advantage_mean": float(episode.mean()) if episode.size else 0.0,
            "advantage_std": float(episode.std()) if episode.size else 0.0,
            "token_advantage_mean": token_mean,
            "token_advantage_std": float(np.sqrt(max(token_var, 0.0))),
            "tokens_total": float(tokens_total),
            "planning_token_fraction": selectors["planning"].count / tokens_total if tokens_total else 0.0,
            "uncertainty_mean": u_mean,
            "uncertainty_std": float(np.sqrt(max(u_var, 0.0))),
            "uncertainty_max": float(uncertainty.max()) if uncertainty.size else 0.0,
            "sepa_lambda": self.sepa.last_lambda,
            "sepa_gate_open": 1.0 if self.sepa.gate_open else 0.0,
        }
        pooled = core.used_uncertainty_N_T
        for name in ("exec", "planning"):
            mean, var = raw[name]
            metrics[f"{name}_uncertainty_mean"], metrics[f"{name}_uncertainty_var"] = mean, var
            if pooled is not uncertainty:
                mean, var = _mean_var(pooled, selectors[name])
            metrics[f"{name}_uncertainty_mean_pooled"], metrics[f"{name}_uncertainty_var_pooled"] = mean, var
        metrics.update(core.metrics)
        return metrics

    def probe(self, seed: int = 0) -> CreditResult:
        """Run a small synthetic ragged batch through the pipeline (SEPA state untouched),
        so a plugin's signature or output-shape problem shows before any model loads."""
        saved = self.sepa.state_dict()
        try:
            batch = synthetic_batch(num_prompts=3, group_size=4, max_tokens=12, seed=seed,
                                    with_entropies=True)
            rng = np.random.default_rng(seed)
            rewards = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
            planning = np.asarray(batch.mask_N_T, dtype=bool) & (rng.random(batch.mask_N_T.shape) < 0.2)
            return self(rewards, batch, planning, step=0)
        finally:
            self.sepa.load_state_dict(saved)

    def state_dict(self) -> dict[str, object]:
        """JSON-serializable state for an exact resume (the SEPA controller)."""
        return {"sepa": self.sepa.state_dict()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.sepa.load_state_dict(state["sepa"])  # type: ignore[arg-type]


def _check_batch(rewards: np.ndarray, mask: np.ndarray, group_size: int) -> None:
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [P, G], got shape {rewards.shape}")
    if rewards.shape[1] != group_size or rewards.size != mask.shape[0]:
        raise ValueError(
            f"rewards of shape {rewards.shape} do not match a batch of {mask.shape[0]} completions "
            f"in groups of {group_size}"
        )


def _planning_mask(planning_N_T: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """The planning mask as bool ``[N, T]``, False on padding (None = no planning tokens).

    Detectors pad to the longest span list, which can be shorter than the token padding.
    """
    if planning_N_T is None:
        return np.zeros(mask.shape, dtype=bool)
    planning = np.asarray(planning_N_T, dtype=bool)
    if planning.ndim != 2 or planning.shape[0] != mask.shape[0]:
        raise ValueError(f"the planning mask has shape {planning.shape}; expected {mask.shape[0]} rows")
    if planning.shape[1] != mask.shape[1]:
        fixed = np.zeros(mask.shape, dtype=bool)
        keep = min(mask.shape[1], planning.shape[1])
        fixed[:, :keep] = planning[:, :keep]
        planning = fixed
    return planning & mask


# ---------------------------------------------------------------------------------------
# Building


def build_credit_pipeline(config: Config, base_dir: Path | None = None) -> CreditPipeline:
    """Resolve the configured stages, check their parameters, and assemble the pipeline.

    ``base_dir`` is the config file's folder (relative ``[plugins] search_paths`` are
    tried there first, then in the working directory).
    """
    algorithm = config.algorithm
    plugins = config.plugins
    validator = OutputValidator(strict=plugins.strict)
    uncertainty = resolve("uncertainty", algorithm.uncertainty_kind, plugins, base_dir)
    advantage_name, transform_name = algorithm.advantage_mode, algorithm.transform_mode
    recipe = ""
    if algorithm.algorithm_mode:
        whole = resolve("algorithm", algorithm.algorithm_mode, plugins, base_dir)
        params = check_params(whole, algorithm.params, "algorithm.params")
        if not whole.builtin:
            return CreditPipeline(AlgorithmCore(whole, params, validator), uncertainty, config, validator)
        chosen = Recipe(whole.name)
        recipe, advantage_name, transform_name = chosen.name, chosen.advantage, chosen.transform
    advantage = resolve("advantage", advantage_name, plugins, base_dir)
    transform = resolve("transform", transform_name, plugins, base_dir)
    advantage_params = check_params(advantage, algorithm.advantage_params, "algorithm.advantage_params")
    transform_params = check_params(transform, algorithm.transform_params, "algorithm.transform_params")
    core = ComposableCore(advantage, advantage_params, transform, transform_params, config, validator)
    return CreditPipeline(core, uncertainty, config, validator, recipe)


# ---------------------------------------------------------------------------------------
# A synthetic batch, for probing pipelines and testing plugins


def synthetic_batch(num_prompts: int = 2, group_size: int = 4, max_tokens: int = 16, seed: int = 0,
                    with_entropies: bool = False) -> SampleBatch:
    """A small random ragged ``SampleBatch`` with consistent texts and character spans.

    Completion lengths vary from 0 to ``max_tokens`` (the first completion is always
    empty, the second always full); every token is one word of the text.
    """
    if num_prompts < 1 or group_size < 1 or max_tokens < 1:
        raise ValueError("synthetic_batch needs at least one prompt, one completion per prompt and one token")
    rng = np.random.default_rng(seed)
    rows = num_prompts * group_size
    lengths = rng.integers(0, max_tokens + 1, size=rows)
    lengths[0] = 0
    if rows > 1:
        lengths[1] = max_tokens
    mask = np.arange(max_tokens)[None, :] < lengths[:, None]
    vocabulary = ["so", "wait", "let", "me", "check", "x", "=", "3", "+", "4", "the", "key", "insight", "is", "7"]
    token_ids = np.where(mask, rng.integers(0, len(vocabulary), size=mask.shape), 0)
    logprobs = np.where(mask, -rng.exponential(1.0, size=mask.shape), 0.0).astype(np.float32)
    entropies = np.where(mask, rng.exponential(1.0, size=mask.shape), 0.0).astype(np.float32) if with_entropies else None
    texts, spans = [], []
    for row in range(rows):
        words = [vocabulary[token] for token in token_ids[row, : lengths[row]]]
        row_spans, position = [], 0
        for word in words:
            row_spans.append((position, position + len(word)))
            position += len(word) + 1
        texts.append(" ".join(words))
        spans.append(row_spans)
    return SampleBatch(
        prompt_token_ids=[[1, 2, 3] for _ in range(num_prompts)],
        group_size=group_size,
        token_ids_N_T=token_ids.astype(np.int64),
        mask_N_T=mask,
        loss_mask_N_T=mask.copy(),
        logprobs_N_T=logprobs,
        finish_reasons=["stop" if length < max_tokens else "length" for length in lengths],
        texts=texts,
        entropies_N_T=entropies,
        token_char_spans=spans,
    )
