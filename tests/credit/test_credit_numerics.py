"""Differential checks of the fast credit code against the exact reference over every
accepted setting: beta in [0, 1000], alpha in [0, 1), lambda in [0, 1], rho in [0, 1].

The documented tolerance (retrain.transforms.compositions): for the float32 uncertainty
the pipeline reports and its float64 episode advantages A, every token advantage is
within ``3e-7 |a*_t| + 2e-14 |A| (1 + beta (1 + u_t / ubar))`` of the exact value
``a*_t``, and within float32's smallest normal (1.2e-38) absolutely below it.
"""

import dataclasses
import math
from fractions import Fraction

import credit_reference as ref
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.config.schema import AlgorithmConfig, Config, GTPOConfig, HICRAConfig, SEPAConfig
from retrain.credit import build_credit_pipeline
from retrain.transforms import gtpo_weights, hicra_amplify

STAGES = {"none": (), "gtpo": ("gtpo",), "hicra": ("hicra",), "gtpo_hicra": ("gtpo", "hicra"),
          "gtpo_sepa": ("sepa", "gtpo"), "gtpo_sepa_hicra": ("sepa", "gtpo", "hicra")}
RELATIVE = 3e-7
SMALLEST_NORMAL = 2.0**-126
LAMBDA_STEPS = 2**20  # lambda = step / 2^20, exact in binary

betas = st.floats(0.0, 1000.0) | st.sampled_from([0.0, 1e-6, 1.0, 999.999, 1000.0])
alphas = st.floats(0.0, 1.0, exclude_max=True) | st.sampled_from([0.0, 0.5, 1 - 1e-9, 1 - 2.0**-52])
uncertainties = st.floats(0.0, 50.0, width=32)


@st.composite
def rows_near_their_mean(draw, count: int) -> list[list[float]]:
    """Rows whose values sit within 1e-4 of a common level: u / ubar - 1 is tiny, the
    case where beta (u / ubar - 1) cancels hardest."""
    rows = []
    for _ in range(count):
        level = draw(st.floats(1e-3, 49.0))
        offsets = draw(st.lists(st.floats(-1e-4, 1e-4), min_size=0, max_size=10))
        rows.append([float(np.float32(level * (1.0 + offset))) for offset in offsets])
    return rows


@st.composite
def cases(draw):
    groups, group_size = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    count = groups * group_size
    if draw(st.booleans()):
        values = draw(rows_near_their_mean(count))
    else:
        values = [draw(st.lists(uncertainties, max_size=12)) for _ in range(count)]
    # Each row: its sampled tokens' u, with environment tokens interleaved (junk logprob -7).
    environment = [draw(st.lists(st.booleans(), min_size=len(row) + 3, max_size=len(row) + 3)) for row in values]
    planning = [draw(st.lists(st.booleans(), min_size=len(marks), max_size=len(marks))) for marks in environment]
    rewards = draw(st.lists(st.lists(st.sampled_from([0.0, 0.25, 1.0]) | st.floats(-5.0, 5.0), min_size=group_size,
                                     max_size=group_size), min_size=groups, max_size=groups))
    return group_size, values, environment, planning, rewards


def interleave(values: list[float], environment: list[bool]) -> tuple[list[float], list[bool]]:
    """Logprobs of a row whose sampled tokens have surprisal ``values`` (in order), with
    environment tokens where ``environment`` says so, until the values run out."""
    logprobs, marks, pending = [], [], list(values)
    for is_environment in environment:
        if not pending and not is_environment:
            break
        logprobs.append(-7.0 if is_environment else -pending.pop(0))
        marks.append(is_environment)
    for value in pending:
        logprobs.append(-value)
        marks.append(False)
    return logprobs, marks


def within_tolerance(actual: np.ndarray, exact: list[Fraction], advantage: float, uncertainty: list[float],
                     beta: float) -> None:
    bounds = ref.gtpo_error_bound(advantage, uncertainty, beta)
    for token, (fast, truth, absolute) in enumerate(zip(actual, exact, bounds)):
        error = abs(Fraction(float(fast)) - truth)
        allowed = RELATIVE * abs(truth) + Fraction(absolute) + Fraction(SMALLEST_NORMAL)
        assert error <= allowed, f"token {token}: fast {float(fast)!r}, exact {float(truth)!r}, error {float(error):.3g}"


@settings(max_examples=300, deadline=None)
@given(cases(), st.sampled_from(sorted(STAGES)), st.sampled_from(["grpo", "maxrl"]), betas, alphas,
       st.integers(0, LAMBDA_STEPS), st.sampled_from([0.0, 0.3, 1.0]))
def test_the_pipeline_matches_the_exact_reference_at_every_setting(case, transform, advantage, beta, alpha, step, rho):
    group_size, values, environment, planning_marks, rewards = case
    rows, environment_rows = zip(*(interleave(v, e) for v, e in zip(values, environment)))
    batch = ref.ragged_batch(list(rows), group_size, environment=list(environment_rows))
    width = batch.mask_N_T.shape[1]
    planning = np.zeros((len(rows), width), dtype=bool)
    for index, marks in enumerate(planning_marks):
        planning[index, : min(len(marks), width)] = marks[:width]
    config = dataclasses.replace(
        Config(),
        algorithm=AlgorithmConfig(advantage_mode=advantage, transform_mode=transform, surprisal_mask_rho=rho),
        gtpo=GTPOConfig(beta=beta), hicra=HICRAConfig(alpha=alpha),
        sepa=SEPAConfig(steps=LAMBDA_STEPS, delay_steps=0, correct_rate_gate=0.0),
    )
    result = build_credit_pipeline(config)(np.array(rewards), batch, planning, step=step)
    sampled = batch.loss_mask_N_T
    signal = [list(map(float, result.uncertainty_N_T[i][sampled[i]])) for i in range(len(rows))]
    assert signal == [[float(np.float32(x)) for x in row] for row in values]  # surprisal is exact
    marks = [list(planning[i][sampled[i]]) for i in range(len(rows))]
    exact = ref.token_advantages(list(result.episode_advantages_N), signal, marks, group_size=group_size,
                                 stages=STAGES[transform], beta=beta, alpha=alpha, lam=step / LAMBDA_STEPS, rho=rho)
    for index, expected_row in enumerate(exact):
        within_tolerance(result.token_advantages_N_T[index][sampled[index]], expected_row,
                         float(result.episode_advantages_N[index]), signal[index], beta)
    assert np.all(result.token_advantages_N_T[~sampled] == 0.0)


def test_gtpo_keeps_its_precision_where_float32_cancels():
    # beta 1000, u within 1e-4 of the mean: the float32 form (beta / ubar) u + (1 - beta)
    # keeps only about 6e-5 of 1; the exact weights are 1 + 1000 (u / ubar - 1).
    u = np.array([[1.0, 1.0001, 0.9999, 1.00005]], dtype=np.float32)
    mask = np.ones_like(u, dtype=bool)
    weights = gtpo_weights(u, mask, beta=1000.0)
    exact = ref.gtpo(Fraction(1), [Fraction(float(x)) for x in u[0]], Fraction(1000))
    for fast, truth in zip(weights[0], exact):
        assert abs(Fraction(float(fast)) - truth) <= 2.0**-24 * truth + Fraction(1e-12)


def test_hicra_keeps_the_sign_and_precision_as_alpha_approaches_one():
    # -2 + alpha * 2 = -2 (1 - alpha): with alpha = 1 - 1e-9, -2.0000000544e-9 (1 - alpha
    # as the float alpha really is); float32 addition would give 0 or a handful of digits.
    alpha = 1 - 1e-9
    amplified = hicra_amplify(np.array([[-2.0, 3.0]], dtype=np.float32), np.ones((1, 2), bool), alpha)
    exact = [-2 * (1 - Fraction(alpha)), 3 * (1 + Fraction(alpha))]
    for fast, truth in zip(amplified[0], exact):
        assert abs(Fraction(float(fast)) - truth) <= 2 * 2.0**-24 * abs(truth)
    assert amplified[0, 0] < 0.0


logprobs32 = st.floats(-110.0, 0.0, width=32) | st.floats(-0.0009765625, 9.5367431640625e-07, width=32) | st.sampled_from(
    [0.0, -0.0, 1e-7, 3e-7, -1e-9, -6e-8, -1e-3, -87.0, -104.0, -math.inf])


@settings(max_examples=300, deadline=None)
@given(st.lists(logprobs32, min_size=1, max_size=30))
def test_predictive_variance_is_correctly_rounded(logprobs):
    from retrain.uncertainty import predictive_variance

    logprobs = [float(np.float32(x)) for x in logprobs]  # the batch holds float32
    values = predictive_variance(ref.ragged_batch([logprobs], group_size=1))[0]
    # The float32 result of the float64 product: within 2^-24 relative (plus float64's own
    # rounding), or one subnormal step below the smallest normal float32.
    for fast, exact in zip(values, ref.predictive_variance(logprobs)):
        assert fast >= 0.0
        assert abs(float(fast) - exact) <= (2.0**-24 + 1e-15) * exact + 2.0**-149


def test_predictive_variance_of_confident_tokens_and_rounded_logprobs():
    from retrain.uncertainty import predictive_variance

    # l = -1e-9: 1 - p = 1e-9 (float32 1 - exp(l) is exactly 0); l = +3e-7 from server
    # rounding: p is clamped to 1, so u = 0 (unclamped it would be about -3e-7).
    values = predictive_variance(ref.ragged_batch([[-1e-9, 3e-7, math.log(0.5)]], group_size=1))[0]
    assert values[0] == pytest.approx(1e-9, rel=1e-7)
    assert values[1] == 0.0
    assert values[2] == 0.25
