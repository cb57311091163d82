"""Checking a data set's references against the reward that will score them, when the
data loads.

The ``match`` and ``math`` rewards compare every completion with ``Example.reference``;
an empty reference can never score as correct (its prompts only cost sampling time), and
a reference math-verify cannot parse is compared as text. Each reward says which of its
references it cannot use (``reference_problems``, see ``retrain.rewards.base``), and this
turns that into config issues on ``[data] path``: an error when no example is usable, a
warning with the count and the first few examples otherwise. Other rewards (``judge``,
``custom``, an environment plugin) decide for themselves what a reference is, so nothing
is checked for them.

The JSONL source reports these with its other problems when the run is planned (so
``retrain explain`` shows them), from the file it reads anyway; the MATH source when it
loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from retrain.config.schema import Config
from retrain.errors import ConfigIssue
from retrain.rewards.base import ReferenceProblem
from retrain.types import Example

# How many examples a message names before "and N more".
NAMED_EXAMPLES = 5


def reward_problems(config: Config) -> Callable[[Sequence[str]], list[ReferenceProblem]] | None:
    """The configured reward's ``reference_problems``, or None when it checks none."""
    if config.environment.provider:
        return None  # the environment scores its own episodes; [reward] is not built
    if config.reward.type == "match":
        from retrain.rewards.match import MatchReward

        return MatchReward.reference_problems
    if config.reward.type == "math":
        from retrain.rewards.math import MathReward

        return MathReward.reference_problems
    return None


def reference_issues(examples: Sequence[Example], config: Config, where: str,
                     name: Callable[[int], str] | None = None) -> list[ConfigIssue]:
    """What the configured reward finds in the references of ``examples``, as issues on
    ``[data] path`` at ``where``; ``name(i)`` says how to call example ``i`` in a message
    (default: its id)."""
    check = reward_problems(config)
    if check is None or not examples:
        return []
    problems = check([example.reference for example in examples])
    label = name or (lambda index: repr(examples[index].example_id))
    issues = []
    unusable = {index for problem in problems if problem.unusable for index in problem.indices}
    for problem in problems:
        count = len(problem.indices)
        if problem.unusable and len(unusable) == len(examples):
            text = f"{'the only example has' if count == 1 else f'all {count} examples have'} {problem.problem}"
            issues.append(ConfigIssue(where, "data", "path", text + ", so nothing could be learned", problem.fix))
            continue
        named = ", ".join(label(index) for index in problem.indices[:NAMED_EXAMPLES])
        more = f" and {count - NAMED_EXAMPLES} more" if count > NAMED_EXAMPLES else ""
        verb = "has" if count == 1 else "have"
        text = f"{count} of {len(examples)} examples {verb} {problem.problem}: {named}{more}"
        issues.append(ConfigIssue(where, "data", "path", text, problem.fix, warning=True))
    return issues
