import credit_reference as ref
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.advantages import (
    correct_rate,
    group_stats,
    grpo_advantages,
    maxrl_advantages,
)


def test_grpo_by_hand():
    # group 1: mean = (1 + 0 + 0 + 1) / 4 = 0.5 -> r - 0.5
    # group 2: mean = (0.2 + 0.4 + 0.9 + 0.5) / 4 = 0.5 -> -0.3, -0.1, 0.4, 0.0
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.2, 0.4, 0.9, 0.5]])
    expected = np.array([[0.5, -0.5, -0.5, 0.5], [-0.3, -0.1, 0.4, 0.0]])
    np.testing.assert_allclose(grpo_advantages(rewards), expected, atol=1e-12)


def test_grpo_all_equal_rewards_give_zero():
    # 0.7 - mean(0.7, 0.7, 0.7) is 0 up to the rounding of the mean
    np.testing.assert_allclose(grpo_advantages(np.full((2, 3), 0.7)), np.zeros((2, 3)), atol=1e-15)


def test_maxrl_by_hand():
    # mean = 1/4 = 0.25; A = (r - 0.25) / (0.25 + 1e-6)
    # correct: 0.75 / 0.250001 = 2.99998800004800..., wrong: -0.25 / 0.250001 = -0.99999600001600...
    rewards = np.array([[1.0, 0.0, 0.0, 0.0]])
    advantages = maxrl_advantages(rewards)
    np.testing.assert_allclose(advantages, [[0.75 / 0.250001, -0.25 / 0.250001, -0.25 / 0.250001, -0.25 / 0.250001]],
                               rtol=1e-12)
    assert advantages[0, 0] == pytest.approx(2.999988, abs=1e-6)


def test_maxrl_mean_at_or_below_the_floor_gives_zero():
    # mean = 0 (all wrong), mean = 1e-6 exactly (<= 1e-6), mean negative.
    rewards = np.array([[0.0, 0.0], [2e-6, 0.0], [-1.0, 0.5]])
    np.testing.assert_array_equal(maxrl_advantages(rewards), np.zeros((3, 2)))


def test_maxrl_just_above_the_floor_is_finite():
    # mean = 2e-6 > 1e-6: A = (4e-6 - 2e-6) / (2e-6 + 1e-6) = 2/3 and (0 - 2e-6) / 3e-6 = -2/3
    advantages = maxrl_advantages(np.array([[4e-6, 0.0]]))
    np.testing.assert_allclose(advantages, [[2 / 3, -2 / 3]], rtol=1e-9)


def test_maxrl_all_correct_group_gives_zero():
    np.testing.assert_allclose(maxrl_advantages(np.ones((1, 5))), np.zeros((1, 5)), atol=1e-12)


def test_group_stats_classify_uniform_groups():
    rewards = np.array([
        [1.0, 1.0, 1.0],  # all correct
        [0.0, 0.0, 0.0],  # all wrong
        [0.5, 0.5, 0.5],  # other tie
        [1.0, 0.0, 1.0],  # informative
        [-1.0, -1.0, -1.0],  # all wrong (nothing earned)
    ])
    stats = group_stats(rewards)
    assert stats.informative_P.tolist() == [False, False, False, True, False]
    assert (stats.all_correct, stats.all_wrong, stats.other_ties, stats.uniform) == (1, 2, 1, 4)


def test_correct_rate_counts_full_rewards():
    # 3 of 6 completions reach 1.0 (0.99 does not)
    assert correct_rate(np.array([[1.0, 0.0, 0.99], [1.0, 2.0, 0.0]])) == 0.5
    assert correct_rate(np.zeros((0, 4))) == 0.0


rewards_strategy = st.integers(1, 6).flatmap(
    lambda groups: st.integers(1, 8).flatmap(
        lambda size: st.lists(
            st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(-5, 5), min_size=size, max_size=size),
            min_size=groups, max_size=groups,
        )
    )
)


@settings(max_examples=200, deadline=None)
@given(rewards_strategy)
def test_grpo_sums_to_zero_per_group_and_matches_the_reference(rewards):
    array = np.array(rewards)
    advantages = grpo_advantages(array)
    np.testing.assert_allclose(advantages.sum(axis=1), 0.0, atol=1e-9)
    np.testing.assert_allclose(advantages, [ref.grpo(row) for row in rewards], atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(rewards_strategy)
def test_maxrl_is_finite_and_matches_the_reference(rewards):
    advantages = maxrl_advantages(np.array(rewards))
    assert np.all(np.isfinite(advantages))
    np.testing.assert_allclose(advantages, [ref.maxrl(row) for row in rewards], rtol=1e-9, atol=1e-9)
