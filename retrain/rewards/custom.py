"""The ``custom`` reward: a user function scores each completion.

``[reward] custom_module`` names the module and ``custom_function`` (default ``score``)
the function in it. The contract::

    def score(completion: str, reference: str) -> float: ...
    def score(completion: str, reference: str, example: Example) -> float: ...   # optional

The function is called once per completion, with the completion text and the reference
answer (and, when it declares an ``example`` parameter or ``**kwargs``, the whole
``retrain.types.Example`` as ``example=``). It must return a finite real number (a bool
counts as 0/1). The signature is checked when the run is built, before any model loads.

The run plan resolves the function once, like every plugin (``retrain.registry.resolve``
with the dotted path ``<custom_module>.<custom_function>``: first the ``[plugins]
search_paths`` directories and module prefixes, then a plain import) and checks its
signature. With ``[plugins] strict = false`` a non-finite result is replaced by 0.0 and
logged; a result that is not a number at all, or an exception in the function, always
stops the run.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
from collections.abc import Callable

import numpy as np

from retrain.config.schema import Config
from retrain.errors import PluginError
from retrain.registry import PluginOutputError
from retrain.rewards.base import examples_per_completion
from retrain.types import Example

logger = logging.getLogger(__name__)


def _accepts_example(function: Callable[..., object]) -> bool:
    """Whether ``function`` takes the whole example as ``example=`` (or ``**kwargs``)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return False  # builtins without introspectable signatures: the two-argument call
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return True
        if parameter.name == "example" and parameter.kind is not inspect.Parameter.POSITIONAL_ONLY:
            return True
    return False


class CustomReward:
    """Rewards from a user function ``score(completion, reference[, example=]) -> float``,
    resolved by the run plan (``label`` is its dotted path)."""

    def __init__(self, config: Config, *, function: Callable[..., object], label: str) -> None:
        self.label = label
        self.function = function
        self.pass_example = _accepts_example(function)
        self.strict = config.plugins.strict
        # Non-finite results replaced by 0.0 (only under [plugins] strict = false).
        self.repaired = 0

    def score(self, texts: list[str], examples: list[Example]) -> np.ndarray:
        aligned = examples_per_completion(texts, examples)
        rewards_N = np.zeros(len(texts), dtype=np.float64)
        for index, (text, example) in enumerate(zip(texts, aligned)):
            rewards_N[index] = self._one(index, text, example)
        return rewards_N

    def _one(self, index: int, text: str, example: Example) -> float:
        try:
            if self.pass_example:
                value = self.function(text, example.reference, example=example)
            else:
                value = self.function(text, example.reference)
        except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() is still a plugin error
            raise PluginError(f"custom reward {self.label} raised on completion {index}: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(value, (numbers.Real, np.bool_)):
            raise PluginOutputError(f"custom reward {self.label} returned {type(value).__name__} {value!r:.80} for "
                              f"completion {index}; it must return a float")
        number = float(value)
        if math.isfinite(number):
            return number
        if self.strict:
            raise PluginOutputError(f"custom reward {self.label} returned {number} for completion {index}; rewards must "
                              "be finite — fix the function, or set [plugins] strict = false to score it 0.0")
        logger.warning("custom reward %s returned %s for completion %d; using 0.0", self.label, number, index)
        self.repaired += 1
        return 0.0
