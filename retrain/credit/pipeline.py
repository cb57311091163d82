"""The credit pipeline: one call per step, from rewards and trajectories to token
advantages (see ``retrain.credit``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrain.advantages import GroupStats, correct_rate, group_stats
from retrain.algorithms import Recipe
from retrain.config.schema import Config
from retrain.credit.cores import AlgorithmCore, ComposableCore, CoreInput, CoreOutput
from retrain.credit.stages import Stage, build_stage, transform_stages
from retrain.credit.synthetic import SyntheticRandom, synthetic_batch
from retrain.errors import RetrainError
from retrain.plugin_outputs import OutputValidator
from retrain.transforms import SEPAController, top_rho_mask
from retrain.types import CreditResult, SampleBatch


@dataclass(frozen=True)
class Selector:
    """A token subset: the bool mask, the same as a float32 0/1 array (multiplying by it
    is several times faster than by a bool array), and its size."""

    chosen_N_T: np.ndarray
    weights_N_T: np.ndarray
    count: int

    @classmethod
    def of(cls, chosen_N_T: np.ndarray) -> Selector:
        return cls(chosen_N_T, chosen_N_T.astype(np.float32), int(np.count_nonzero(chosen_N_T)))


def _mean_var(values_N_T: np.ndarray, selector: Selector) -> tuple[float, float]:
    """Mean and variance of the selected (finite) values; (0, 0) when none is selected.

    Two passes (mean, then squared deviations) keep a small variance accurate, which
    matters for the pooled execution uncertainty that SEPA drives toward 0.
    """
    if selector.count == 0:
        return 0.0, 0.0
    mean = float((values_N_T * selector.weights_N_T).sum(dtype=np.float64)) / selector.count
    deviations = values_N_T - values_N_T.dtype.type(mean)
    deviations *= selector.weights_N_T
    np.square(deviations, out=deviations)
    # numpy's pairwise float32 summation is accurate enough here and several times
    # faster than a float64 copy.
    return mean, float(deviations.sum()) / selector.count


class CreditPipeline:
    """Resolved, validated credit assignment; call it once per step."""

    def __init__(self, core: ComposableCore | AlgorithmCore, uncertainty: Stage, config: Config,
                 validator: OutputValidator, recipe: str = "") -> None:
        self.core = core
        self.uncertainty = uncertainty
        self.config = config
        self.validator = validator
        self.recipe = recipe
        self.rho = config.algorithm.surprisal_mask_rho
        # The schedule runs only for a pipeline with a stage that reads its lambda.
        self.sepa = SEPAController(config.sepa) if core.needs("needs_sepa") else None

    @property
    def needs_planning(self) -> bool:
        """Whether a stage reads the planning mask (otherwise the caller may pass None)."""
        return self.core.needs("needs_planning")

    @property
    def token_level(self) -> bool:
        """Whether tokens of one sequence may get different advantages: a transform stage,
        top-rho masking, or an algorithm plugin (which may do anything)."""
        return isinstance(self.core, AlgorithmCore) or bool(self.core.stages) or self.rho > 0

    @property
    def needs_entropies(self) -> bool:
        """Whether the engine must return per-token entropies."""
        return self.uncertainty.needs("needs_entropies") or self.core.needs("needs_entropies")

    def describe(self) -> dict[str, object]:
        """The resolved pipeline, for ``retrain explain``."""
        uncertainty = self.uncertainty.describe()
        del uncertainty["params"]
        description: dict[str, object] = {
            "mode": "algorithm" if isinstance(self.core, AlgorithmCore) else "composable",
            "recipe": self.recipe,
            "uncertainty": uncertainty,
        }
        description.update(self.core.describe())
        description["surprisal_mask_rho"] = self.rho
        if self.sepa is not None:
            description["sepa"] = dataclasses.asdict(self.config.sepa)
        description.update({"strict": self.validator.strict, "needs_planning": self.needs_planning,
                            "needs_entropies": self.needs_entropies})
        return description

    def __call__(self, rewards_P_G: np.ndarray, batch: SampleBatch, planning_N_T: np.ndarray | None,
                 step: int) -> CreditResult:
        """One step's credit; what ``strict = false`` repaired is logged in one warning per
        stage and counted in the result."""
        result = self._assign(rewards_P_G, batch, planning_N_T, step)
        self.validator.log_repairs()
        return result

    def _assign(self, rewards_P_G: np.ndarray, batch: SampleBatch, planning_N_T: np.ndarray | None,
                step: int) -> CreditResult:
        self.validator.reset()
        rewards = np.asarray(rewards_P_G, dtype=np.float64)
        loss_mask = np.asarray(batch.loss_mask_N_T, dtype=bool)
        _check_batch(rewards, loss_mask, batch.group_size)
        group_size = rewards.shape[1]
        planning = _planning_mask(planning_N_T, loss_mask)
        uncertainty = self.validator.tokens(self.uncertainty(batch), loss_mask, self.uncertainty.label, group_size,
                                            trusted=self.uncertainty.resolved.builtin)
        selectors = {"sampled": Selector.of(loss_mask), "exec": Selector.of(loss_mask & ~planning),
                     "planning": Selector.of(planning)}
        rate = correct_rate(rewards)
        raw = {name: _mean_var(uncertainty, selectors[name]) for name in ("exec", "planning")}
        sepa_lambda = self._sepa_lambda(step, rate, raw["exec"][1] if selectors["exec"].count else float("nan"))
        core = self.core(CoreInput(rewards, batch, loss_mask, uncertainty, planning, step, sepa_lambda))
        tokens = core.token_advantages_N_T.astype(np.float32, copy=False)
        stats = group_stats(rewards)
        metrics = self._metrics(rewards, stats, core, uncertainty, selectors, rate, raw)
        if self.rho > 0.0:
            rho = top_rho_mask(uncertainty, loss_mask, group_size, self.rho)
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
            repaired_values=self.validator.repaired_values,
        )

    def _sepa_lambda(self, step: int, rate: float, execution_variance: float) -> float:
        return 0.0 if self.sepa is None else self.sepa.update(step, rate, execution_variance)

    def _metrics(self, rewards: np.ndarray, stats: GroupStats, core: CoreOutput, uncertainty: np.ndarray,
                 selectors: dict[str, Selector], rate: float, raw: dict[str, tuple[float, float]]) -> dict[str, float]:
        episode = core.episode_advantages_P_G
        token_mean, token_var = _mean_var(core.token_advantages_N_T, selectors["sampled"])
        u_mean, u_var = _mean_var(uncertainty, selectors["sampled"])
        tokens_total = selectors["sampled"].count
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
            "uncertainty_max": float(uncertainty.max(initial=-np.inf, where=selectors["sampled"].chosen_N_T))
            if tokens_total else 0.0,
        }
        if self.sepa is not None:
            metrics["sepa_lambda"] = self.sepa.last_lambda
            metrics["sepa_gate_open"] = 1.0 if self.sepa.gate_open else 0.0
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
        """Run a small synthetic ragged batch, with environment turns, through the
        pipeline (SEPA state untouched), so a plugin's signature, mask or output-shape
        problem shows before any model loads. What ``strict = false`` repaired in this
        made-up batch is not logged: the steps' own warnings tell."""
        saved = self.state_dict()
        try:
            batch = synthetic_batch(num_prompts=3, group_size=4, max_tokens=12, seed=seed,
                                    with_entropies=True, with_environment_turns=True)
            rng = SyntheticRandom(seed)
            rewards = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
            planning = np.asarray(batch.loss_mask_N_T, dtype=bool) & (rng.random(batch.loss_mask_N_T.shape) < 0.2)
            return self._assign(rewards, batch, planning, step=0)
        finally:
            self.load_state_dict(saved)

    def state_dict(self) -> dict[str, object]:
        """JSON-serializable state for an exact resume: the SEPA schedule's, or None when
        no stage uses it."""
        return {"sepa": None if self.sepa is None else self.sepa.state_dict()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        saved = state.get("sepa")
        if (saved is None) != (self.sepa is None):
            mismatch = ("holds a SEPA schedule, but this pipeline has no SEPA stage" if saved is not None
                        else "has no SEPA schedule, but this pipeline has a SEPA stage")
            raise RetrainError(f"the saved credit state {mismatch} — resume with the transform_mode / algorithm_mode "
                               "the run was saved with")
        if self.sepa is not None:
            if not isinstance(saved, Mapping):
                raise RetrainError(f"the saved SEPA state is {type(saved).__name__}, not a table; the checkpoint is "
                                   "damaged — resume from an earlier checkpoint")
            self.sepa.load_state_dict(saved)


def _check_batch(rewards: np.ndarray, loss_mask: np.ndarray, group_size: int) -> None:
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [P, G], got shape {rewards.shape}")
    if rewards.shape[1] != group_size or rewards.size != loss_mask.shape[0]:
        raise ValueError(
            f"rewards of shape {rewards.shape} do not match a batch of {loss_mask.shape[0]} completions "
            f"in groups of {group_size}"
        )


def _planning_mask(planning_N_T: np.ndarray | None, loss_mask: np.ndarray) -> np.ndarray:
    """The planning mask as bool ``[N, T]``, True only on sampled tokens (None = no
    planning tokens).

    Detectors pad to the longest span list, which can be shorter than the token padding.
    """
    if planning_N_T is None:
        return np.zeros(loss_mask.shape, dtype=bool)
    planning = np.asarray(planning_N_T, dtype=bool)
    if planning.ndim != 2 or planning.shape[0] != loss_mask.shape[0]:
        raise ValueError(f"the planning mask has shape {planning.shape}; expected {loss_mask.shape[0]} rows")
    if planning.shape[1] != loss_mask.shape[1]:
        fixed = np.zeros(loss_mask.shape, dtype=bool)
        keep = min(loss_mask.shape[1], planning.shape[1])
        fixed[:, :keep] = planning[:, :keep]
        planning = fixed
    return planning & loss_mask


def build_credit_pipeline(config: Config, base_dir: Path | None = None) -> CreditPipeline:
    """Resolve the configured stages, check their parameters, and assemble the pipeline.

    ``base_dir`` is the config file's folder (relative ``[plugins] search_paths`` are
    tried there first, then in the working directory).
    """
    algorithm = config.algorithm
    validator = OutputValidator(strict=config.plugins.strict)
    uncertainty = build_stage("uncertainty", algorithm.uncertainty_kind, config, base_dir)
    advantage_name, transform_name = algorithm.advantage_mode, algorithm.transform_mode
    recipe = ""
    if algorithm.algorithm_mode:
        whole = build_stage("algorithm", algorithm.algorithm_mode, config, base_dir)
        if not whole.resolved.builtin:
            return CreditPipeline(AlgorithmCore(whole, validator), uncertainty, config, validator)
        chosen = Recipe(whole.resolved.name)
        recipe, advantage_name, transform_name = chosen.name, chosen.advantage, chosen.transform
    advantage = build_stage("advantage", advantage_name, config, base_dir)
    transform = build_stage("transform", transform_name, config, base_dir)
    core = ComposableCore(advantage, transform, transform_stages(transform, config), validator)
    return CreditPipeline(core, uncertainty, config, validator, recipe)
