"""Only sampled tokens carry credit: environment tokens of multi-turn rows (real tokens,
``mask_N_T`` True, ``loss_mask_N_T`` False) get no token advantage and no uncertainty,
and never enter a mean, a count or a threshold."""

import dataclasses
import math

import credit_reference as ref
import numpy as np
import pytest

from retrain.config.schema import AlgorithmConfig, Config, GTPOConfig, HICRAConfig, PluginsConfig, SEPAConfig
from retrain.credit import build_credit_pipeline, synthetic_batch

# 2 prompts x 2 trajectories, 4 positions. s = sampled, e = environment, . = padding.
# Sampled tokens carry surprisal u = -logprob; environment tokens hold a junk logprob
# of -9 (engines write 0 there): a stage that read it would see u = 9.
#   row 0 (prompt 0): s e s s   u = 1 . 3 2    planning at position 2
#   row 1 (prompt 0): s s e .   u = 2 4 . .
#   row 2 (prompt 1): e s s s   u = . 1 1 4    the detector marks position 0, an environment token
#   row 3 (prompt 1): s e e s   u = 3 . . 1    planning at position 3
LOGPROBS = [[-1.0, -9.0, -3.0, -2.0], [-2.0, -4.0, -9.0], [-9.0, -1.0, -1.0, -4.0], [-3.0, -9.0, -9.0, -1.0]]
ENVIRONMENT = [[False, True, False, False], [False, False, True], [True, False, False, False],
               [False, True, True, False]]
REWARDS = np.array([[1.0, 0.0], [0.0, 1.0]])  # GRPO: A = +0.5, -0.5 | -0.5, +0.5


def batch():
    return ref.ragged_batch(LOGPROBS, group_size=2, environment=ENVIRONMENT, width=4)


def planning() -> np.ndarray:
    marks = np.zeros((4, 4), dtype=bool)
    marks[0, 2] = marks[2, 0] = marks[3, 3] = True
    return marks


def pipeline(transform: str, rho: float = 0.0):
    # beta 0.5, alpha 0.2; SEPA gate open, lambda = step / 2 = 0.5 at step 1.
    config = dataclasses.replace(
        Config(),
        algorithm=AlgorithmConfig(advantage_mode="grpo", transform_mode=transform, surprisal_mask_rho=rho),
        gtpo=GTPOConfig(beta=0.5), hicra=HICRAConfig(alpha=0.2),
        sepa=SEPAConfig(steps=2, delay_steps=0, correct_rate_gate=0.0),
    )
    return build_credit_pipeline(config)


def test_sepa_gtpo_hicra_by_hand_on_sampled_tokens_only():
    result = pipeline("gtpo_sepa_hicra")(REWARDS, batch(), planning(), step=1)
    # SEPA, lambda 0.5: execution tokens move halfway to their row's sampled execution mean.
    #   row 0: execution 1, 2 (mean 1.5) -> 1.25, 1.75; planning 3 stays     pooled 1.25 . 3 1.75
    #   row 1: execution 2, 4 (mean 3)   -> 2.5, 3.5                          pooled 2.5 3.5
    #   row 2: the planning mark sits on an environment token and is dropped:
    #          execution 1, 1, 4 (mean 2) -> 1.5, 1.5, 3                      pooled . 1.5 1.5 3
    #   row 3: execution 3 alone (mean 3) -> 3; planning 1 stays              pooled 3 . . 1
    # GTPO, w = 1 + 0.5 (u / ubar - 1), ubar over the sampled tokens (the 1e-8 shifts
    # nothing at this precision):
    #   row 0: ubar = (1.25 + 3 + 1.75) / 3 = 2  -> w = 0.8125, 1.25, 0.9375
    #   row 1: ubar = 3                          -> w = 11/12, 13/12
    #   row 2: ubar = 2                          -> w = 0.875, 0.875, 1.25
    #   row 3: ubar = 2                          -> w = 1.25, 0.75
    # a = A w, then HICRA x 1.2 on the positive planning tokens (row 0 position 2,
    # row 3 position 3):
    #   row 0: 0.40625, 0.625 * 1.2 = 0.75, 0.46875
    #   row 1: -0.5 * 11/12 = -0.458333.., -0.5 * 13/12 = -0.541666..
    #   row 2: -0.4375, -0.4375, -0.625
    #   row 3: 0.625, 0.375 * 1.2 = 0.45
    expected = [[0.40625, 0.0, 0.75, 0.46875],
                [-11 / 24, -13 / 24, 0.0, 0.0],
                [0.0, -0.4375, -0.4375, -0.625],
                [0.625, 0.0, 0.0, 0.45]]
    np.testing.assert_allclose(result.token_advantages_N_T, expected, rtol=1e-6, atol=1e-7)
    # Environment tokens carry exactly nothing: no advantage, no uncertainty.
    environment = batch().mask_N_T & ~batch().loss_mask_N_T
    assert np.all(result.token_advantages_N_T[environment] == 0.0)
    assert np.all(result.uncertainty_N_T[environment] == 0.0)
    metrics = result.metrics
    # 10 sampled tokens of 13 real ones; planning: row 0 position 2 and row 3 position 3.
    assert metrics["tokens_total"] == 10 and metrics["planning_token_fraction"] == pytest.approx(0.2)
    # Sampled u: 1 3 2 | 2 4 | 1 1 4 | 3 1: sum 22 over 10 tokens.
    assert metrics["uncertainty_mean"] == pytest.approx(2.2) and metrics["uncertainty_max"] == 4.0
    # Execution u: 1 2 | 2 4 | 1 1 4 | 3: mean 18 / 8 = 2.25; planning u: 3 and 1, mean 2.
    assert metrics["exec_uncertainty_mean"] == pytest.approx(2.25)
    assert metrics["planning_uncertainty_mean"] == pytest.approx(2.0)
    # Token advantage sum 1.625 - 1.0 - 1.5 + 1.075 = 0.2 over 10 sampled tokens.
    assert metrics["token_advantage_mean"] == pytest.approx(0.02, rel=1e-6)


def test_gtpo_means_cover_the_sampled_tokens_only():
    result = pipeline("gtpo")(REWARDS, batch(), planning(), step=1)
    # row 0: u = 1, 3, 2, ubar = 2 (with the environment token's 9 it would be 3.75):
    # w = 1 + 0.5 (u / 2 - 1) = 0.75, 1.25, 1.0; a = 0.5 w
    np.testing.assert_allclose(result.token_advantages_N_T[0], [0.375, 0.0, 0.625, 0.5], rtol=1e-6)


def test_top_rho_counts_and_ranks_sampled_tokens_only():
    result = pipeline("none", rho=0.4)(REWARDS, batch(), None, step=1)
    # group 0 sampled u: 1 3 2 | 2 4 (n = 5, the 9s do not count): keep ceil(0.4 * 5) = 2,
    #   threshold 3 -> row 0 position 2 and row 1 position 1
    # group 1 sampled u: 1 1 4 | 3 1: threshold 3 -> row 2 position 3 and row 3 position 0
    expected = [[0.0, 0.0, 0.5, 0.0], [0.0, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0, -0.5], [0.5, 0.0, 0.0, 0.0]]
    np.testing.assert_array_equal(result.token_advantages_N_T, expected)
    assert result.metrics["rho_threshold"] == 3.0
    assert result.metrics["rho_masked_fraction"] == pytest.approx(0.6)  # 6 of 10 sampled tokens


def test_predictive_variance_and_entropy_are_zero_on_environment_tokens():
    values = pipeline("none")(REWARDS, batch(), None, step=1).uncertainty_N_T
    environment = batch().mask_N_T & ~batch().loss_mask_N_T
    assert np.all(values[environment] == 0.0)
    config = dataclasses.replace(Config(), algorithm=AlgorithmConfig(uncertainty_kind="predictive_variance"))
    result = build_credit_pipeline(config)(REWARDS, batch(), None, step=1)
    # row 0 position 0: p = e^-1, u = p (1 - p) = 0.2325...
    assert result.uncertainty_N_T[0, 0] == pytest.approx(math.exp(-1) * (1 - math.exp(-1)), rel=1e-6)
    assert np.all(result.uncertainty_N_T[environment] == 0.0)


RECORDING_PLUGIN = '''
import numpy as np
from retrain.plugin_api import register

SEEN = {}

@register("transform")
def per_sampled_token(ctx, params):
    """One value per sampled token: 1, 2, 3, ... along each row."""
    SEEN["mask"] = ctx.mask_N_T.copy()
    return [np.arange(1, n + 1, dtype=np.float32) for n in ctx.mask_N_T.sum(axis=1)]
'''


def test_plugins_see_the_loss_mask_and_sequences_land_on_sampled_tokens(tmp_path):
    (tmp_path / "recording_plugin.py").write_text(RECORDING_PLUGIN)
    config = dataclasses.replace(Config(), algorithm=AlgorithmConfig(transform_mode="recording_plugin.per_sampled_token"),
                                 plugins=PluginsConfig(search_paths=[str(tmp_path)]))
    result = build_credit_pipeline(config)(REWARDS, batch(), None, step=1)
    import recording_plugin

    np.testing.assert_array_equal(recording_plugin.SEEN["mask"], batch().loss_mask_N_T)
    # Values go to the sampled positions in order, skipping environment tokens.
    np.testing.assert_array_equal(result.token_advantages_N_T,
                                  [[1, 0, 2, 3], [1, 2, 0, 0], [0, 1, 2, 3], [1, 0, 0, 2]])


def test_the_probe_batch_has_environment_turns():
    probe = synthetic_batch(num_prompts=3, group_size=4, max_tokens=12, with_environment_turns=True)
    environment = probe.mask_N_T & ~probe.loss_mask_N_T
    assert environment.any()
    assert np.all(probe.logprobs_N_T[environment] == 0.0)
