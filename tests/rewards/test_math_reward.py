"""The math reward (retrain.rewards.math) and the optional-dependency check it uses."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from retrain.config.schema import Config, RewardConfig
from retrain.errors import ConfigError
from retrain.optional import require_module
from retrain.types import Example


def _example(reference: str) -> Example:
    return Example("e", ({"role": "user", "content": "q"},), reference)


def test_missing_optional_package_names_the_extra():
    with pytest.raises(ConfigError) as caught:
        require_module("retrain_no_such_package", "math", "reward", "type", "type = \"math\"")
    message = str(caught.value)
    assert "[reward].type" in message
    assert "retrain_no_such_package" in message
    assert "pip install 'retrain[math]'" in message


@pytest.mark.integration
def test_symbolic_equivalence():
    pytest.importorskip("math_verify")
    from retrain.rewards.math import MathReward

    reward = MathReward(Config(reward=RewardConfig(type="math")))
    cases = [
        (r"\frac{1}{2}", r"The answer is $\boxed{0.5}$", 1.0),
        (r"3\sqrt{2}", r"\boxed{\sqrt{18}}", 1.0),
        ("x^2+1", r"\boxed{1+x^2}", 1.0),
        ("7", "7", 1.0),
        ("7", "8", 0.0),
        ("5", r"I first thought 5, but \boxed{6}", 0.0),  # the box wins over earlier numbers
        ("5", "no answer at all {{{", 0.0),
    ]
    texts = [text for _, text, _ in cases]
    examples = [_example(reference) for reference, _, _ in cases]
    rewards = reward.score(texts, examples)
    assert rewards.dtype == np.float64
    assert rewards.tolist() == [expected for _, _, expected in cases]


@pytest.mark.integration
def test_scoring_off_the_main_thread():
    pytest.importorskip("math_verify")
    from retrain.rewards.math import MathReward

    reward = MathReward(Config(reward=RewardConfig(type="math")))
    results: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: results.append(reward.score([r"\boxed{2/4}"], [_example("0.5")])))
    worker.start()
    worker.join()
    assert results[0].tolist() == [1.0]
