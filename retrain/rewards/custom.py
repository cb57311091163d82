"""The ``custom`` reward: a user function scores each completion, several at once, each
within a deadline.

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

Concurrency and deadline. A step's completions are scored on worker threads, at most
``[reward] max_concurrency`` calls at once, so a function that waits (on a server, a
subprocess, a file) costs a step its slowest calls, not their sum. The thread-safety
contract: the function may run on several threads at once, never on the main one. Code
that only reads its arguments is safe; shared mutable state (a cache, a client) needs a
lock or one copy per thread; code that cannot be made safe runs with ``max_concurrency =
1``, one call at a time, still on a worker thread, so ``signal``-based timeouts (which
need the main thread) never work in it.

Each call may take at most ``[reward] timeout_s`` seconds; one that takes longer stops the
run with an error naming the function, the completion and its example. A thread cannot
be stopped from outside, so an overdue call is abandoned, not ended: the workers are
daemon threads that this module starts itself, and a call stuck forever never keeps the
process from exiting. The deadline is kept by the calling thread, so it holds whenever
the function lets other Python code run, which is all pure-Python code and all waiting;
a single C call that holds the interpreter lock (a huge integer power, say) delays it
(retrain/concurrency.py runs the calls).

Results keep the completions' order, and the error reported is always that of the lowest
failing completion, as if the calls had been made one after another: once a call fails,
no new calls start, and the calls before it are waited for (each within its deadline).
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
from collections.abc import Callable

import numpy as np

from retrain.concurrency import map_with_deadlines
from retrain.config.schema import Config
from retrain.errors import PluginError
from retrain.registry import PluginOutputError
from retrain.rewards.base import examples_per_completion
from retrain.types import Example

logger = logging.getLogger(__name__)

# How much of a prompt names an example that has no id, in a deadline error.
PROMPT_CHARS = 60


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


def describe_example(example: Example) -> str:
    """The example in an error message: its id, or the start of its prompt without one."""
    if example.example_id:
        return f"example {example.example_id!r}"
    prompt = next((m.get("content", "") for m in example.messages if m.get("role") == "user"), "")
    if not prompt and example.messages:
        prompt = example.messages[0].get("content", "")
    start = prompt[:PROMPT_CHARS] + ("..." if len(prompt) > PROMPT_CHARS else "")
    return f"the example whose prompt starts {start!r}"


class CustomReward:
    """Rewards from a user function ``score(completion, reference[, example=]) -> float``,
    resolved by the run plan (``label`` is its dotted path), called on at most
    ``[reward] max_concurrency`` worker threads at once, each call within ``[reward]
    timeout_s`` seconds."""

    def __init__(self, config: Config, *, function: Callable[..., object], label: str) -> None:
        self.label = label
        self.function = function
        self.pass_example = _accepts_example(function)
        self.strict = config.plugins.strict
        self.timeout_s = config.reward.timeout_s
        self.max_concurrency = config.reward.max_concurrency
        # Non-finite results replaced by 0.0 (only under [plugins] strict = false): in all,
        # and in the last call of ``score`` (a step's metrics row counts it).
        self.repaired = 0
        self.last_repaired = 0

    def score(self, texts: list[str], examples: list[Example]) -> np.ndarray:
        aligned = examples_per_completion(texts, examples)
        values = map_with_deadlines(lambda index: self._call(index, texts[index], aligned[index]), len(texts),
                                    max_workers=self.max_concurrency, timeout_s=self.timeout_s,
                                    overdue=lambda index: self._overdue(index, aligned[index]), name="custom-reward")
        rewards_N = np.asarray(values, dtype=np.float64).reshape(len(texts))
        self.last_repaired = self._repair(rewards_N)
        self.repaired += self.last_repaired
        return rewards_N

    def _overdue(self, index: int, example: Example) -> PluginError:
        return PluginError(
            f"custom reward {self.label} did not return within {self.timeout_s:g} s on completion {index} "
            f"({describe_example(example)}) — make the function faster, or raise [reward] timeout_s"
        )

    def _call(self, index: int, text: str, example: Example) -> float:
        """One call of the function, on a worker thread: its result as a float. A
        non-finite result comes back as it is only when it is to be repaired."""
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
        try:
            number = float(value)
        except OverflowError:
            raise PluginOutputError(f"custom reward {self.label} returned an integer of {len(str(value))} digits for "
                                    f"completion {index}, too large for a float; return a float") from None
        if not math.isfinite(number) and self.strict:
            raise PluginOutputError(f"custom reward {self.label} returned {number} for completion {index}; rewards must "
                              "be finite — fix the function, or set [plugins] strict = false to score it 0.0")
        return number

    def _repair(self, rewards_N: np.ndarray) -> int:
        """Non-finite results under ``strict = false`` (strict refused them already):
        scored 0.0, logged once per step with their count, and counted."""
        bad_N = ~np.isfinite(rewards_N)
        repaired = int(bad_N.sum())
        if repaired:
            nan = int(np.isnan(rewards_N).sum())
            logger.warning("custom reward %s returned non-finite values for %d of %d completions (%d NaN, %d inf), "
                           "first completion %d; scored 0.0", self.label, repaired, len(rewards_N), nan,
                           repaired - nan, int(np.flatnonzero(bad_N)[0]))
            rewards_N[bad_N] = 0.0
        return repaired
