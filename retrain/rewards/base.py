"""What every reward shares: its error type and the alignment of examples to completions.

A reward is built once per run as ``Reward(config)`` and then called once per step as
``score(texts, examples) -> rewards`` with every completion of the step, so rewards that
talk to a server or a solver can batch and parallelize. ``examples`` is either one
example per completion, or one per prompt when the completions come in prompt-major
groups (row ``p * G + g`` is completion ``g`` of prompt ``p``); the result is a float64
array with one finite value per completion.
"""

from __future__ import annotations

from collections.abc import Sequence

from retrain.errors import RetrainError
from retrain.types import Example


class RewardError(RetrainError):
    """A reward could not be computed (judge unreachable, bad verdicts, ...)."""


def examples_per_completion(texts: Sequence[str], examples: Sequence[Example]) -> list[Example]:
    """``examples`` aligned one-to-one with ``texts``.

    Accepts one example per completion, or one per prompt with the completions in
    prompt-major groups of equal size.
    """
    if len(examples) == len(texts):
        return list(examples)
    if examples and len(texts) % len(examples) == 0:
        group_size = len(texts) // len(examples)
        return [example for example in examples for _ in range(group_size)]
    raise ValueError(
        f"{len(texts)} completions cannot be matched to {len(examples)} examples: give one example per "
        "completion, or one per prompt with the same number of completions each"
    )
