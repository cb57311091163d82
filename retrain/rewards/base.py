"""What every reward shares: its error type and the alignment of examples to completions.

A reward is built once per run as ``Reward(config)`` and then called once per step as
``score(texts, examples) -> rewards`` with every completion of the step, so rewards that
talk to a server or a solver can batch and parallelize. ``examples`` is either one
example per completion, or one per prompt when the completions come in prompt-major
groups (row ``p * G + g`` is completion ``g`` of prompt ``p``); the result is a float64
array with one finite value per completion.

A reward that compares completions with ``Example.reference`` may also say which
references it cannot use, as ``reference_problems(references) -> list[ReferenceProblem]``
(a classmethod): the data sources call it when the data loads (``retrain.data.references``),
so an empty or unreadable reference is reported before the model loads, not hidden in
rewards of 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from retrain.errors import RetrainError
from retrain.rewards.answers import normalize_answer
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


@dataclass(frozen=True)
class ReferenceProblem:
    """References a reward cannot use as written.

    ``indices`` point into the references checked; ``problem`` completes "N examples
    have ..." and ``fix`` says what to do. ``unusable`` references can never score, so a data
    set made only of them is an error; the others are scored in a weaker way (a warning).
    """

    indices: tuple[int, ...]
    problem: str
    fix: str
    unusable: bool


def empty_references(references: Sequence[str], reward: str) -> list[ReferenceProblem]:
    """The references with nothing to compare (empty once normalized: ``""``, blanks, a
    lone period, ``$ $``): no completion ever matches them."""
    indices = tuple(index for index, reference in enumerate(references) if not normalize_answer(reference))
    if not indices:
        return []
    return [ReferenceProblem(indices, f"an empty reference, which the {reward} reward never scores as correct",
                             "give each example its answer, or remove those examples", unusable=True)]
