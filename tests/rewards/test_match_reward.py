"""The match reward (retrain.rewards.match)."""

from __future__ import annotations

import numpy as np
import pytest

from retrain.config.schema import Config
from retrain.rewards.match import MatchReward
from retrain.types import Example


def _example(reference: str, example_id: str = "e") -> Example:
    return Example(example_id, ({"role": "user", "content": "q"},), reference)


def test_arithmetic_answers_score_exactly():
    reward = MatchReward(Config())
    rewards = reward.score(["7", "8", " 7\n"], [_example("7")] * 3)
    assert rewards.dtype == np.float64
    assert rewards.tolist() == [1.0, 0.0, 1.0]


def test_boxed_and_dollar_answers():
    reward = MatchReward(Config())
    texts = [r"so \boxed{\frac{1}{2}}.", r"$\frac{1}{2}$.", r"\boxed{0.5}", r"\boxed{\frac{1}{2}"]
    # 1: box content equals; 2: $...$ and period stripped; 3: different spelling (match is
    # not symbolic); 4: unclosed box -> whole text, which differs.
    assert reward.score(texts, [_example(r"\frac{1}{2}")] * 4).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_one_example_per_prompt_expands_over_the_group():
    reward = MatchReward(Config())
    examples = [_example("1", "a"), _example("2", "b")]
    # Prompt-major: rows 0-2 belong to "a" (reference 1), rows 3-5 to "b" (reference 2).
    texts = ["1", "2", "1", "2", "2", "1"]
    assert reward.score(texts, examples).tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]


def test_mismatched_counts_are_an_error():
    with pytest.raises(ValueError, match="cannot be matched"):
        MatchReward(Config()).score(["1", "2", "3"], [_example("1"), _example("2")])


@pytest.mark.parametrize(("completion", "reference"), [
    (r"\boxed{}", ""),          # an empty box against an empty reference
    ("", ""),                   # a blank completion
    (r"\boxed{ $ $ }", " . "),  # empty once normalized, on both sides
    (r"\boxed{}", "7"),
    ("7", ""),
])
def test_an_empty_answer_or_reference_never_scores(completion, reference):
    assert MatchReward(Config()).score([completion], [_example(reference)]).tolist() == [0.0]


def test_the_references_it_cannot_use_are_the_empty_ones():
    problems = MatchReward.reference_problems(["7", "", " $ $ ", "x", "."])
    assert [(problem.indices, problem.unusable) for problem in problems] == [((1, 2, 4), True)]
    assert "an empty reference, which the match reward never scores as correct" in problems[0].problem
    assert MatchReward.reference_problems(["1", "2"]) == []
