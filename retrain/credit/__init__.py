"""The credit-assignment pipeline: rewards and trajectories in, token advantages out.

One call per step, on whole arrays::

    rewards_P_G ── advantage ───▶ episode advantages A     (retrain.advantages: GRPO, MaxRL or a plugin)
    batch       ── uncertainty ─▶ u_N_T                   (retrain.uncertainty: surprisal, ... or a plugin)
    SEPA schedule ─────────────▶ lambda                  (only when a stage declares needs_sepa)
    A, u, planning ── transform stages ─▶ a_N_T          (retrain.transforms: SEPA, GTPO, HICRA or a plugin)
    a_N_T, u ── top-rho masking ─▶ token advantages      (when surprisal_mask_rho > 0)

Only sampled tokens carry credit. Every per-token array is 0 off the batch's loss mask
(``SampleBatch.loss_mask_N_T``: padding and environment turns are off it), every mean and
count is over sampled tokens, the planning mask is ANDed with the loss mask, and the mask
stages receive (``TransformContext.mask_N_T``, ``AlgorithmContext.mask_N_T``) is the loss
mask.

Built-ins and plugins are built by the same code: the registry resolves a stage, and
``check_params`` builds its parameters from the dataclass it registered (a built-in GTPO
reads ``[gtpo]``, a plugin its ``[algorithm.*_params]`` table). An ``algorithm_mode``
plugin replaces the advantage and transform stages with one function. Every stage's
output is validated (``retrain.plugin_outputs``).

Metrics (keys of ``CreditResult.metrics``):

- ``groups_total``, ``groups_informative``, ``groups_all_correct``, ``groups_all_wrong``,
  ``groups_other_ties`` (uniform-reward groups by cause), ``correct_rate``;
- ``advantage_mean``, ``advantage_std`` (episode advantages), ``token_advantage_mean``,
  ``token_advantage_std`` and ``tokens_total`` (over sampled tokens),
  ``planning_token_fraction`` (of sampled tokens);
- ``uncertainty_mean``, ``uncertainty_std``, ``uncertainty_max`` (raw signal, sampled tokens);
- ``sepa_lambda``, ``sepa_gate_open`` (1.0 or 0.0), only when the SEPA schedule runs;
- ``exec_uncertainty_mean``, ``exec_uncertainty_var``, ``planning_uncertainty_mean``,
  ``planning_uncertainty_var`` before pooling, and the same with ``_pooled`` after it;
- ``rho_threshold``, ``rho_masked_fraction`` when ``surprisal_mask_rho > 0``;
- ``plugin_repaired_values``, ``plugin_repaired_sequences`` (non-strict repairs this step);
- plus any metrics a transform or algorithm plugin returns.
"""

from retrain.credit.pipeline import CreditPipeline, build_credit_pipeline
from retrain.credit.synthetic import synthetic_batch

__all__ = ["CreditPipeline", "build_credit_pipeline", "synthetic_batch"]
