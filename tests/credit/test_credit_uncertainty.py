import math

import numpy as np
import pytest
from credit_reference import ragged_batch

from retrain.errors import EngineError
from retrain.uncertainty import predictive_variance, shannon_entropy, surprisal


def test_surprisal_by_hand_with_the_cap():
    # -log p: 0.5 -> 0.5; 2.0 -> 2.0; 80 -> capped at 50; -inf (impossible token) -> 50
    batch = ragged_batch([[-0.5, -2.0], [-80.0, -np.inf, -0.0]], group_size=1)
    expected = np.array([[0.5, 2.0, 0.0], [50.0, 50.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(surprisal(batch), expected)


def test_surprisal_reads_a_logprob_above_zero_as_zero():
    # a server's rounding can return +1e-7 for a certain token: no probability exceeds 1
    assert surprisal(ragged_batch([[1e-7, -1.0]], group_size=1)).tolist() == [[0.0, 1.0]]


def test_surprisal_zeroes_padding_even_when_it_holds_nan():
    batch = ragged_batch([[-1.0], []], group_size=1, width=3)
    assert np.all(np.isfinite(surprisal(batch)))
    assert surprisal(batch)[0].tolist() == [1.0, 0.0, 0.0]


def test_predictive_variance_by_hand():
    # p = 0.5 -> 0.25; p = 1 (logprob 0) -> 0; p = 0.1 -> 0.09
    batch = ragged_batch([[math.log(0.5), 0.0, math.log(0.1)]], group_size=1)
    np.testing.assert_allclose(predictive_variance(batch), [[0.25, 0.0, 0.09]], atol=1e-7)


def test_shannon_entropy_reads_the_engine_values():
    batch = ragged_batch([[-1.0, -1.0], [-1.0]], group_size=1, entropies=[[0.3, 2.5], [1.0]])
    np.testing.assert_allclose(shannon_entropy(batch), [[0.3, 2.5], [1.0, 0.0]], atol=1e-7)


def test_shannon_entropy_without_engine_entropies_is_a_clear_error():
    with pytest.raises(EngineError, match="needs per-token entropies"):
        shannon_entropy(ragged_batch([[-1.0]], group_size=1))


def test_shannon_entropy_with_the_wrong_shape_is_a_clear_error():
    batch = ragged_batch([[-1.0, -2.0]], group_size=1)
    batch.entropies_N_T = np.zeros((1, 5), dtype=np.float32)
    with pytest.raises(EngineError, match="shape"):
        shannon_entropy(batch)
