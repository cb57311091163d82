import credit_reference as ref
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from retrain.transforms import (
    broadcast_advantages,
    gtpo_weights,
    hicra_amplify,
    sepa_pool,
    top_rho_mask,
)


def padded(rows, width=None, fill=0.0, dtype=np.float32):
    width = max([len(row) for row in rows] + [0]) if width is None else width
    array = np.full((len(rows), width), fill, dtype=dtype)
    mask = np.zeros((len(rows), width), dtype=bool)
    for index, row in enumerate(rows):
        array[index, : len(row)] = row
        mask[index, : len(row)] = True
    return array, mask


# ---------------------------------------------------------------------------------------
# GTPO


def test_gtpo_by_hand():
    # u = 1, 2, 3: ubar = 2; w = 1 + 0.5 (u / (2 + 1e-8) - 1) = 0.75, 1.0, 1.25; a = 2 w
    u, mask = padded([[1.0, 2.0, 3.0]])
    tokens = broadcast_advantages(np.array([2.0]), mask) * gtpo_weights(u, mask, beta=0.5)
    np.testing.assert_allclose(tokens, [[1.5, 2.0, 2.5]], atol=1e-6)


def test_gtpo_floors_negative_weights_at_zero():
    # u = 0, 0, 9: ubar = 3; 1 + 2 (0/3 - 1) = -1 -> 0; 1 + 2 (9/3 - 1) = 5
    u, mask = padded([[0.0, 0.0, 9.0]])
    np.testing.assert_allclose(gtpo_weights(u, mask, beta=2.0), [[0.0, 0.0, 5.0]], atol=1e-6)


def test_gtpo_beta_zero_gives_every_token_the_episode_advantage():
    u, mask = padded([[0.1, 7.0, 30.0], [2.0]])
    weights = gtpo_weights(u, mask, beta=0.0)
    np.testing.assert_array_equal(weights, [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_gtpo_mean_uncertainty_below_1e_7_gives_weight_one():
    # ubar = (1e-7 + 0 + 0) / 3 = 3.3e-8 < 1e-7: no weighting, even though u varies
    u, mask = padded([[1e-7, 0.0, 0.0], [1.0, 3.0]])
    weights = gtpo_weights(u, mask, beta=0.5)
    np.testing.assert_allclose(weights[0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(weights[1], [0.75, 1.25, 0.0], atol=1e-6)


def test_gtpo_zero_length_completion_gets_nothing_and_stays_finite():
    u, mask = padded([[], [1.0, 2.0]], width=3)
    weights = gtpo_weights(u, mask, beta=0.3)
    assert np.all(np.isfinite(weights))
    np.testing.assert_array_equal(weights[0], [0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------
# HICRA


def test_hicra_by_hand():
    # planning tokens: 2 + 0.2 * 2 = 2.4; -2 + 0.2 * 2 = -1.6; execution token 0.5 unchanged
    tokens = np.array([[2.0, -2.0, 0.5]], dtype=np.float32)
    planning = np.array([[True, True, False]])
    np.testing.assert_allclose(hicra_amplify(tokens, planning, alpha=0.2), [[2.4, -1.6, 0.5]], atol=1e-6)


def test_hicra_alpha_zero_changes_nothing():
    tokens = np.array([[2.0, -2.0, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(hicra_amplify(tokens, np.ones((1, 3), bool), alpha=0.0), tokens)


# ---------------------------------------------------------------------------------------
# SEPA pooling


def test_sepa_by_hand():
    # execution tokens 1, 3, 2 (the 10 is planning): mean 2
    # lambda 0.5: 0.5 * 2 + 0.5 * u -> 1.5, 2.5, (10), 2.0
    u, mask = padded([[1.0, 3.0, 10.0, 2.0]])
    planning = np.array([[False, False, True, False]])
    np.testing.assert_allclose(sepa_pool(u, mask, planning, 0.5), [[1.5, 2.5, 10.0, 2.0]], atol=1e-6)
    np.testing.assert_allclose(sepa_pool(u, mask, planning, 1.0), [[2.0, 2.0, 10.0, 2.0]], atol=1e-6)
    np.testing.assert_array_equal(sepa_pool(u, mask, planning, 0.0), u)


def test_sepa_without_execution_tokens_changes_nothing():
    u, mask = padded([[4.0, 5.0], []], width=2)
    planning = np.array([[True, True], [False, False]])
    np.testing.assert_array_equal(sepa_pool(u, mask, planning, 1.0), u)


# ---------------------------------------------------------------------------------------
# top-rho masking


def test_top_rho_by_hand():
    # one group, tokens 5, 1, 3 | 2, 4: n = 5, rho = 0.4 -> keep ceil(2) = 2 -> threshold 4
    u, mask = padded([[5.0, 1.0, 3.0], [2.0, 4.0]])
    rho = top_rho_mask(u, mask, group_size=2, rho=0.4)
    assert rho.keep_N_T.tolist() == [[True, False, False], [False, True, False]]
    assert rho.mean_threshold == 4.0
    assert rho.masked_fraction == pytest.approx(3 / 5)


def test_top_rho_zero_and_one_keep_everything():
    u, mask = padded([[5.0, 1.0, 3.0], [2.0]])
    for rho_value in (0.0, 1.0):
        rho = top_rho_mask(u, mask, group_size=2, rho=rho_value)
        np.testing.assert_array_equal(rho.keep_N_T, mask)
        assert rho.masked_fraction == 0.0


def test_top_rho_keeps_ties_at_the_threshold_and_handles_empty_groups():
    # group 0: all 1.0, keep ceil(0.25 * 4) = 1 -> threshold 1 -> all four kept (ties)
    # group 1: no tokens at all
    u, mask = padded([[1.0, 1.0], [1.0, 1.0], [], []], width=2)
    rho = top_rho_mask(u, mask, group_size=2, rho=0.25)
    np.testing.assert_array_equal(rho.keep_N_T, mask)
    assert rho.mean_threshold == 1.0


# ---------------------------------------------------------------------------------------
# Invariants and fast-vs-reference, on random ragged batches


@st.composite
def ragged(draw, max_rows=8, max_len=12):
    groups = draw(st.integers(1, 3))
    group_size = draw(st.integers(1, 4))
    rows = groups * group_size
    lengths = draw(st.lists(st.integers(0, max_len), min_size=rows, max_size=rows))
    values = [draw(st.lists(st.floats(0.0, 50.0, width=32, allow_subnormal=False), min_size=n, max_size=n)) for n in lengths]
    planning = [draw(st.lists(st.booleans(), min_size=n, max_size=n)) for n in lengths]
    advantages = draw(st.lists(st.floats(-20.0, 20.0, width=32, allow_subnormal=False), min_size=rows, max_size=rows))
    return group_size, values, planning, advantages


def arrays(values, planning):
    u, mask = padded(values)
    plan, _ = padded(planning, dtype=bool, fill=False)
    return u, mask, plan


@settings(max_examples=150, deadline=None)
@given(ragged(), st.floats(0.0, 1000.0))
def test_gtpo_keeps_the_sign_matches_the_reference_and_is_finite(case, beta):
    group_size, values, planning, advantages = case
    u, mask, _ = arrays(values, planning)
    tokens = broadcast_advantages(np.array(advantages), mask) * gtpo_weights(u, mask, beta)
    assert np.all(np.isfinite(tokens))
    assert np.all(tokens * np.array(advantages, dtype=np.float32)[:, None] >= 0.0)
    for row, (a, v) in enumerate(zip(advantages, values)):
        ref.assert_close(tokens[row, : len(v)], ref.gtpo(float(np.float32(a)), v, beta))


@settings(max_examples=150, deadline=None)
@given(ragged(), st.floats(0.0, 1000.0))
def test_gtpo_mean_weight_is_one_when_nothing_is_floored(case, beta):
    group_size, values, planning, advantages = case
    u, mask, _ = arrays(values, planning)
    weights = gtpo_weights(u, mask, beta)
    for row, v in enumerate(values):
        if not v or np.mean(v) < 1e-3:
            continue
        mean = np.mean(np.array(v, dtype=np.float64))
        raw = 1.0 + beta * (np.array(v) / (mean + 1e-8) - 1.0)
        assume(np.all(raw > 0.0))
        # mean(w) = 1 + beta (ubar / (ubar + 1e-8) - 1), just below 1; each float32 weight
        # is rounded once, by at most 2^-24 of the largest
        expected = 1.0 + beta * (mean / (mean + 1e-8) - 1.0)
        assert abs(weights[row, : len(v)].astype(np.float64).mean() - expected) < 2.0**-23 * max(1.0, float(raw.max()))


@settings(max_examples=150, deadline=None)
@given(ragged(), st.floats(0.0, 1.0, exclude_max=True))
def test_hicra_keeps_signs_and_touches_only_planning_tokens(case, alpha):
    # a + alpha |a| is a (1 + alpha) for a > 0 and a (1 - alpha) for a < 0: the sign is
    # kept for every alpha < 1, and planning tokens only ever move up.
    group_size, values, planning, advantages = case
    u, mask, plan = arrays(values, planning)
    tokens = broadcast_advantages(np.array(advantages), mask) * gtpo_weights(u, mask, 0.5)
    amplified = hicra_amplify(tokens, plan, alpha)
    np.testing.assert_array_equal(amplified[~plan], tokens[~plan])
    # Never the opposite sign; a tiny negative a times a tiny 1 - alpha may underflow to 0
    # (float32 cannot hold the product), and only then may the sign vanish.
    assert np.all(np.sign(amplified) * np.sign(tokens) >= 0)
    vanished = (amplified == 0) & (tokens != 0)
    assert np.all(np.abs(tokens[vanished]) * (1.0 - alpha) < np.finfo(np.float32).smallest_subnormal)
    assert np.all(amplified[plan] >= tokens[plan])
    assert np.all(np.isfinite(amplified))


def test_hicra_alpha_of_one_or_more_reaches_zero_on_negative_planning_tokens():
    # -2 + 1.0 * 2 = 0; -2 + 1.5 * 2 = 1: with alpha >= 1 a wrong plan stops being penalised
    tokens = np.array([[-2.0, -2.0]], dtype=np.float32)
    planning = np.array([[True, False]])
    np.testing.assert_allclose(hicra_amplify(tokens, planning, 1.0), [[0.0, -2.0]])
    np.testing.assert_allclose(hicra_amplify(tokens, planning, 1.5), [[1.0, -2.0]])


@settings(max_examples=150, deadline=None)
@given(ragged(), st.floats(0.0, 1.0))
def test_sepa_leaves_planning_tokens_and_matches_the_reference(case, lam):
    group_size, values, planning, advantages = case
    u, mask, plan = arrays(values, planning)
    pooled = sepa_pool(u, mask, plan, lam)
    np.testing.assert_array_equal(pooled[plan], u[plan])
    assert np.all(np.isfinite(pooled))
    for row, (v, p) in enumerate(zip(values, planning)):
        ref.assert_close(pooled[row, : len(v)], ref.sepa(v, p, lam))


@settings(max_examples=150, deadline=None)
@given(ragged())
def test_sepa_at_lambda_one_makes_execution_uncertainty_constant(case):
    group_size, values, planning, advantages = case
    u, mask, plan = arrays(values, planning)
    pooled = sepa_pool(u, mask, plan, 1.0)
    execution = mask & ~plan
    for row in range(len(values)):
        row_values = pooled[row][execution[row]]
        if row_values.size:
            assert np.all(row_values == row_values[0])


@settings(max_examples=150, deadline=None)
@given(ragged(), st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.9, 1.0]))
def test_top_rho_matches_the_reference(case, rho):
    group_size, values, planning, advantages = case
    u, mask, _ = arrays(values, planning)
    keep = top_rho_mask(u, mask, group_size, rho).keep_N_T
    for group in range(len(values) // group_size):
        rows = list(range(group * group_size, (group + 1) * group_size))
        expected = ref.top_rho_keep([[float(np.float32(x)) for x in values[row]] for row in rows], rho)
        for row, kept in zip(rows, expected):
            assert keep[row, : len(values[row])].tolist() == kept
