"""Whole-pipeline algorithms: named recipes and the contract of algorithm plugins.

``[algorithm] algorithm_mode`` selects the whole credit pipeline at once. A built-in name
is a recipe ``<advantage>_<transform>`` (``grpo_none``, ``maxrl_gtpo``,
``maxrl_gtpo_hicra``, ``maxrl_gtpo_sepa``, ...): the pipeline is then built exactly as if
``advantage_mode`` and ``transform_mode`` had been set to those two names.

A dotted path names an algorithm plugin instead, a function
``f(ctx: AlgorithmContext, params) -> AlgorithmOutput`` that replaces the advantage and
transform stages (the configured uncertainty is still computed and handed to it, the
SEPA schedule runs for it when it declares ``needs_sepa`` or is not registered, and its
outputs are validated like any plugin's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retrain import registry_names
from retrain.types import SampleBatch


class Recipe:
    """A recipe: one built-in advantage, then one built-in transform."""

    def __init__(self, name: str) -> None:
        if name not in registry_names.ALGORITHM_RECIPES:
            raise ValueError(f"unknown algorithm recipe {name!r}")
        self.name = name
        self.advantage, self.transform = registry_names.ALGORITHM_RECIPES[name]

    @property
    def description(self) -> str:
        return f"recipe: advantage {self.advantage}, then transform {self.transform}"


@dataclass(frozen=True)
class AlgorithmContext:
    """Everything an algorithm plugin sees for one step.

    ``rewards_P_G`` are the rewards per prompt and completion. ``mask_N_T`` is the
    batch's ``loss_mask_N_T``: True only on the tokens the policy sampled, never on
    padding or environment turns; only those tokens may carry credit, and the token
    advantages returned are zeroed everywhere else. ``uncertainty_N_T`` is the configured
    uncertainty signal (0 off the loss mask); ``planning_N_T`` marks sampled planning
    tokens (all False unless the plugin registered ``needs_planning=True`` or is not
    registered); ``sepa_lambda`` is this step's SEPA schedule value (0 when the plugin
    registered without ``needs_sepa=True``).
    """

    rewards_P_G: np.ndarray
    uncertainty_N_T: np.ndarray
    mask_N_T: np.ndarray
    planning_N_T: np.ndarray
    step: int
    sepa_lambda: float
    batch: SampleBatch

    @property
    def group_size(self) -> int:
        return int(self.rewards_P_G.shape[1])


@dataclass(frozen=True)
class AlgorithmOutput:
    """What an algorithm plugin returns.

    ``episode_advantages`` is ``[P, G]`` (or flat ``[N]``); ``token_advantages`` is padded
    ``[N, T]`` or a list of N per-completion arrays, one value per sampled token;
    ``uncertainty_N_T`` optionally reports the signal the plugin finally used;
    ``metrics`` are added to the step's log.
    """

    episode_advantages: np.ndarray
    token_advantages: object
    uncertainty_N_T: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
