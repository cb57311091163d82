"""The ``match`` reward: 1.0 when the completion's final answer equals the reference.

The final answer is the content of the completion's last ``\\boxed{...}``, or the whole
stripped completion when it has no box (short-answer tasks like the built-in arithmetic
source answer with the bare value, e.g. ``"7"``). Both sides are lightly normalized
(whitespace, a trailing period, wrapping ``$...$``) and compared as strings:
r = 1[normalize(answer(completion)) == normalize(reference) != ""]. An empty answer
(``\\boxed{}``, a blank completion) never scores, and neither does an empty reference;
the data sources report those examples when the data loads (``reference_problems``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrain.config.schema import Config
from retrain.rewards.answers import final_answer, normalize_answer
from retrain.rewards.base import (
    ReferenceProblem,
    empty_references,
    examples_per_completion,
)
from retrain.types import Example


class MatchReward:
    """Exact match of the normalized final answer against the normalized reference."""

    def __init__(self, config: Config) -> None:
        self.config = config

    @classmethod
    def reference_problems(cls, references: Sequence[str]) -> list[ReferenceProblem]:
        """The references no completion can match: the empty ones."""
        return empty_references(references, "match")

    def score(self, texts: list[str], examples: list[Example]) -> np.ndarray:
        aligned = examples_per_completion(texts, examples)
        rewards_N = np.zeros(len(texts), dtype=np.float64)
        for index, (text, example) in enumerate(zip(texts, aligned)):
            if matches(text, example.reference):
                rewards_N[index] = 1.0
        return rewards_N


def matches(text: str, reference: str) -> bool:
    """Whether ``text``'s final answer equals ``reference`` once both are normalized; an
    empty answer or reference never matches."""
    answer = normalize_answer(final_answer(text))
    return bool(answer) and answer == normalize_answer(reference)
