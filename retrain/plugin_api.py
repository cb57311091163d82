"""The public API for plugin authors: contexts, outputs, the register decorator, helpers.

A plugin is a module found through ``[plugins] search_paths`` (or importable normally) and
named in the config by its dotted path ``module.attr``. The contract of each kind:

- advantage:   ``def f(rewards_P_G: np.ndarray, params) -> np.ndarray`` — ``[P, G]`` (or ``[N]``)
- uncertainty: ``def f(batch: SampleBatch) -> np.ndarray`` — ``[N, T]``, or a list of N arrays
- transform:   ``def f(ctx: TransformContext, params) -> np.ndarray | TransformOutput`` —
  token advantages ``[N, T]`` or a list of N arrays
- algorithm:   ``def f(ctx: AlgorithmContext, params) -> AlgorithmOutput``
- planning:    ``class D: __init__(self, config); detect(self, texts, token_char_spans) -> bool [N, T]``
- data:        ``class S: __init__(self, config); examples(self) -> list[Example]``
- environment: ``class E: __init__(self, config); examples(); rollout(examples, engine, encode, params) -> Scored; close()``
- backend / engine: classes constructed with the config (see ``retrain init-plugin``); any
  component class may also report problems with a config from
  ``@classmethod config_issues(cls, config) -> list[ConfigIssue]``

Only sampled tokens carry credit. A row of a ``SampleBatch`` holds the model's tokens and,
in multi-turn rollouts, environment turns between them: ``batch.mask_N_T`` is True on
every real token, ``batch.loss_mask_N_T`` only on the tokens the policy sampled. The
``mask_N_T`` of ``TransformContext`` and ``AlgorithmContext`` is that loss mask: compute
means and counts over it, and expect whatever a plugin returns off it to be set to 0. A
list of N arrays holds one value per sampled token of each row, in order.

``params`` is the plugin's table (``[algorithm.advantage_params]``,
``[algorithm.transform_params]`` or ``[algorithm.params]``): a read-only mapping, or an
instance of the dataclass declared with ``@register(kind, params=MyParams)``, whose fields
are type-checked when the run is built (the built-in stages declare theirs the same way,
reading ``[gtpo]``, ``[hicra]`` and ``[sepa]`` through ``params_section``). Declare
bounds and help with ``setting``::

    from dataclasses import dataclass
    import numpy as np
    from retrain.plugin_api import register, setting

    @dataclass(frozen=True)
    class ScaleParams:
        scale: float = setting(1.0, "multiplies the GRPO advantage", gt=0.0)

    @register("advantage", params=ScaleParams)
    def scaled_grpo(rewards_P_G: np.ndarray, params: ScaleParams) -> np.ndarray:
        return params.scale * (rewards_P_G - rewards_P_G.mean(axis=1, keepdims=True))

The built-in math is exported too, so a plugin can compose it: ``grpo_advantages``,
``maxrl_advantages``, ``surprisal``, ``predictive_variance``, ``gtpo_weights``,
``hicra_amplify``, ``sepa_pool``, ``broadcast_advantages``. ``synthetic_batch`` builds a
small ragged batch (optionally with environment turns) for a plugin's own tests.
"""

from __future__ import annotations

from retrain.advantages import correct_rate, grpo_advantages, maxrl_advantages
from retrain.algorithms import AlgorithmContext, AlgorithmOutput
from retrain.config.schema import Config, setting
from retrain.credit import synthetic_batch
from retrain.errors import ConfigIssue
from retrain.registry import PluginSpec, plugin_spec, register
from retrain.transforms import (
    TransformContext,
    TransformOutput,
    broadcast_advantages,
    gtpo_weights,
    hicra_amplify,
    sepa_pool,
)
from retrain.types import (
    BackendCapabilities,
    Encoder,
    Engine,
    EngineCapabilities,
    Example,
    PolicyKind,
    PolicyRef,
    SampleBatch,
    SamplingParams,
    Scored,
    TrainBatch,
    TrainResult,
)
from retrain.uncertainty import predictive_variance, shannon_entropy, surprisal

__all__ = [
    "AlgorithmContext",
    "AlgorithmOutput",
    "BackendCapabilities",
    "Config",
    "ConfigIssue",
    "Encoder",
    "Engine",
    "EngineCapabilities",
    "Example",
    "PluginSpec",
    "PolicyKind",
    "PolicyRef",
    "SampleBatch",
    "SamplingParams",
    "Scored",
    "TrainBatch",
    "TrainResult",
    "TransformContext",
    "TransformOutput",
    "broadcast_advantages",
    "correct_rate",
    "grpo_advantages",
    "gtpo_weights",
    "hicra_amplify",
    "maxrl_advantages",
    "plugin_spec",
    "predictive_variance",
    "register",
    "sepa_pool",
    "setting",
    "shannon_entropy",
    "surprisal",
    "synthetic_batch",
]
