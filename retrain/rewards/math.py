"""The ``math`` reward: 1.0 when the completion's answer is mathematically equivalent to
the reference.

Equivalence is decided by the ``math-verify`` package (``pip install 'retrain[math]'``):
both the reference and the completion are parsed from LaTeX or plain expressions into
sympy objects and compared symbolically (``\\frac{1}{2}`` = ``0.5``, ``1+x^2`` =
``x^2+1``, ``\\sqrt{18}`` = ``3\\sqrt{2}``), with the completion's last ``\\boxed{...}``
taking priority. A reference math-verify cannot parse falls back to the ``match``
comparison for that example (logged once), so an odd reference never silently scores 0.
An empty answer, or an empty reference, never scores.

References are checked when the data loads (``reference_problems``): empty ones are
counted as unusable, and the distinct others are parsed as the reward parses them, for
at most ``CHECK_BUDGET_S`` seconds (a plain number always parses and costs nothing; a
tuple can take 50 ms), so a large data set delays no start; a reference left unchecked
is reported by the warning above when first scored.

Time limits. A completion such as ``\\boxed{9^{9^{9}}}`` sends sympy into a computation
that does not end in any useful time. math-verify bounds each parse and comparison
with a SIGALRM timer (``TIMEOUT_S``; a parse or comparison that runs out counts as no
match), and Python allows that timer only on the main thread. In split mode rewards
are scored on a sampling thread, so there each completion is scored in a helper
process instead, which applies the same timers on its own main thread, and the thread
waits at most ``DEADLINE_FACTOR * TIMEOUT_S`` for its answer. That also covers work a
signal cannot interrupt (a long computation inside C code). A completion that misses
the deadline, or whose scoring kills the helper (say, for memory), scores 0.0 with a
warning naming it, and the helper is replaced. Scoring on the main thread stays
in-process, so it pays nothing for the helper.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import multiprocessing
import re
import signal
import threading
import time
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from types import ModuleType

import numpy as np

from retrain.config.schema import Config
from retrain.optional import require_module
from retrain.rewards.answers import final_answer, last_boxed, normalize_answer
from retrain.rewards.base import (
    ReferenceProblem,
    RewardError,
    empty_references,
    examples_per_completion,
)
from retrain.rewards.match import matches
from retrain.types import Example

logger = logging.getLogger(__name__)

# Seconds math-verify may spend parsing or comparing one answer.
TIMEOUT_S = 5
# Off the main thread, the whole scoring of one completion (a parse and a few
# comparisons, each bounded by TIMEOUT_S in the helper) gets this many TIMEOUT_S.
DEADLINE_FACTOR = 3
# Seconds a new helper process may take to start and import math-verify and sympy.
STARTUP_S = 120
# Seconds the references of a data set may take to be parsed when it loads.
CHECK_BUDGET_S = 2.0
# A reference math-verify always reads, so the check skips it: an integer or a decimal.
PLAIN_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")


def parse_reference(math_verify: ModuleType, reference: str, timeout_s: int | None) -> list[object]:
    """``reference`` as math-verify reads it (empty when it cannot)."""
    return list(math_verify.parse(
        "\\boxed{" + reference + "}",
        extraction_config=[math_verify.LatexExtractionConfig(), math_verify.ExprExtractionConfig()],
        parsing_timeout=timeout_s,
    ))


def equivalent(math_verify: ModuleType, text: str, reference: str, timeout_s: int | None,
               gold_cache: dict[str, list[object]]) -> tuple[bool, bool]:
    """(whether ``text``'s answer equals ``reference``, whether math-verify parsed ``reference``).

    The answer is the completion's last box (a model that writes ``\\boxed{8} wait, no:
    \\boxed{7}`` answers 7), or its whole text when it has none; an empty answer, or an
    empty reference, never matches. An unparsable reference is compared as a normalized
    string instead.
    """
    boxed = last_boxed(text)
    if not normalize_answer(final_answer(text)) or not normalize_answer(reference):
        return False, True
    if reference not in gold_cache:
        # Completions of one prompt share a reference: parse it once.
        gold_cache[reference] = parse_reference(math_verify, reference, timeout_s)
    gold = gold_cache[reference]
    if not gold:
        return matches(text, reference), False
    answer = math_verify.parse(text if boxed is None else "\\boxed{" + boxed + "}", parsing_timeout=timeout_s)
    if not answer:
        return False, True
    return bool(math_verify.verify(gold, answer, timeout_seconds=timeout_s)), True


def serve(connection: Connection, verifier: str, timeout_s: int) -> None:
    """The helper process: answer each ``(text, reference)`` received with ``equivalent``'s
    result until the connection closes. It runs math-verify on its main thread, so the
    SIGALRM timers work."""
    # Ctrl-C in a terminal and a scheduler's SIGTERM reach the whole process group; the
    # run handles them (it finishes its step, which may still need this helper) and stops
    # the helper itself, and the helper also ends when the run's end of the pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    math_verify = importlib.import_module(verifier)
    gold_cache: dict[str, list[object]] = {}
    connection.send("ready")
    while True:
        try:
            text, reference = connection.recv()
        except EOFError:
            return
        connection.send(equivalent(math_verify, text, reference, timeout_s, gold_cache))


class VerifierProcess:
    """A helper process that scores completions for a thread other than the main one."""

    def __init__(self, verifier: str, timeout_s: int) -> None:
        # spawn, not fork: the parent runs threads (and maybe torch), which fork would copy
        # mid-operation.
        context = multiprocessing.get_context("spawn")
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=serve, args=(child_end, verifier, timeout_s), daemon=True,
                                       name="retrain-math-verify")
        self.process.start()
        child_end.close()
        self.started = False

    def check(self, text: str, reference: str, deadline_s: float) -> tuple[bool, bool] | str:
        """``equivalent``'s result, or what went wrong when the helper gave no answer (it ran
        past ``deadline_s``, or it died, say killed for memory, while scoring)."""
        if not self.started:
            if not self.connection.poll(STARTUP_S):
                raise RewardError(f"math reward: the math-verify helper process did not start in {STARTUP_S} s — "
                                  "check that math-verify imports quickly in a fresh Python")
            try:
                self.connection.recv()
            except EOFError as exc:
                self.process.join(1)
                raise RewardError(f"math reward: the math-verify helper process ended while starting (exit code "
                                  f"{self.process.exitcode}) — check that math-verify imports in a fresh Python: "
                                  "python -c 'import math_verify'") from exc
            self.started = True
        try:
            self.connection.send((text, reference))
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.process.join(1)
            raise RewardError(f"math reward: the math-verify helper process ended between completions (exit code "
                              f"{self.process.exitcode}); something outside retrain stopped it — check for an "
                              "out-of-memory kill in the system log") from exc
        if not self.connection.poll(deadline_s):
            return f"took more than {deadline_s:g} s and was stopped"
        try:
            return self.connection.recv()
        except EOFError:
            self.process.join(1)
            return f"ended the helper process (exit code {self.process.exitcode})"

    def stop(self) -> None:
        self.connection.close()
        self.process.kill()
        self.process.join()


def preview(text: str, limit: int = 200) -> str:
    """``text`` as a quoted literal, cut to ``limit`` characters for a log line."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class MathReward:
    """Symbolic equivalence of the completion's answer and the reference (math-verify).

    ``timeout_s`` is math-verify's limit per parse or comparison (``TIMEOUT_S``);
    ``verifier`` names the module providing math-verify's ``parse``/``verify`` API.
    """

    def __init__(self, config: Config, *, timeout_s: int = TIMEOUT_S, verifier: str = "math_verify") -> None:
        self.config = config
        self.timeout_s = timeout_s
        self.verifier = verifier
        self._math_verify: ModuleType = require_module(verifier, "math", "reward", "type", "type = \"math\"")
        self._gold_cache: dict[str, list[object]] = {}
        self._unparsable_references: set[str] = set()
        self._helper: VerifierProcess | None = None
        self._stop_helper: weakref.finalize | None = None
        self._helper_lock = threading.Lock()

    @classmethod
    def reference_problems(cls, references: Sequence[str], *, budget_s: float = CHECK_BUDGET_S,
                           verifier: str = "math_verify") -> list[ReferenceProblem]:
        """The empty references (unusable), and those math-verify cannot parse (compared
        as text instead), among what ``budget_s`` seconds could check. Parsing needs
        math-verify (a missing package is reported by the plan) and the main thread (its
        timers); without them only the empty ones are found."""
        problems = empty_references(references, "math")
        if importlib.util.find_spec(verifier) is None or threading.current_thread() is not threading.main_thread():
            return problems
        unparsable, checked, total = _unparsable(importlib.import_module(verifier), references, budget_s)
        if not unparsable:
            return problems
        indices = tuple(index for index, reference in enumerate(references) if reference in unparsable)
        partial = (f" (found among the first {checked} of {total} distinct references, all that {budget_s:g} s "
                   "could check; the reward warns of others when it first scores them)") if checked < total else ""
        problems.append(ReferenceProblem(
            indices, f"a reference math-verify cannot parse, which the math reward compares as text, as the "
                     f"match reward would{partial}",
            "write those answers as LaTeX or plain expressions (\\frac{1}{2}, 3\\sqrt{2}, x^2+1), or use "
            "[reward] type = \"match\" for text answers", unusable=False))
        return problems

    def _equivalent(self, text: str, reference: str) -> bool:
        if threading.current_thread() is threading.main_thread():
            matched, reference_parsed = equivalent(self._math_verify, text, reference, self.timeout_s,
                                                   self._gold_cache)
        else:
            result = self._check_in_helper(text, reference)
            if result is None:
                return False
            matched, reference_parsed = result
        if not reference_parsed and reference not in self._unparsable_references:
            self._unparsable_references.add(reference)
            logger.warning("math-verify cannot parse the reference %r; comparing it as a string", reference)
        return matched

    def _check_in_helper(self, text: str, reference: str) -> tuple[bool, bool] | None:
        """``equivalent``'s result from the helper process; None when it gave none."""
        deadline_s = DEADLINE_FACTOR * self.timeout_s
        with self._helper_lock:
            if self._helper is None:
                self._helper = VerifierProcess(self.verifier, self.timeout_s)
                # Stops the helper when this reward is collected, or at exit.
                self._stop_helper = weakref.finalize(self, VerifierProcess.stop, self._helper)
            result = self._helper.check(text, reference, deadline_s)
            if isinstance(result, str):
                assert self._stop_helper is not None
                self._stop_helper()
                self._helper = None
                logger.warning("math reward: scoring a completion %s; it scores 0.0: %s", result, preview(text))
                return None
            return result

    def score(self, texts: list[str], examples: list[Example]) -> np.ndarray:
        aligned = examples_per_completion(texts, examples)
        rewards_N = np.zeros(len(texts), dtype=np.float64)
        for index, (text, example) in enumerate(zip(texts, aligned, strict=True)):
            if self._equivalent(text, example.reference):
                rewards_N[index] = 1.0
        return rewards_N


def _unparsable(math_verify: ModuleType, references: Sequence[str], budget_s: float) -> tuple[set[str], int, int]:
    """(the distinct non-empty references math-verify cannot parse, how many were
    checked, how many there are), parsing in order until ``budget_s`` runs out (the
    first is always checked)."""
    distinct = [reference for reference in dict.fromkeys(references) if normalize_answer(reference)]
    deadline = time.monotonic() + budget_s
    unparsable: set[str] = set()
    checked = 0
    for reference in distinct:
        if not PLAIN_NUMBER.fullmatch(reference.strip()) and not parse_reference(math_verify, reference, TIMEOUT_S):
            unparsable.add(reference)
        checked += 1
        if time.monotonic() >= deadline:
            break
    return unparsable, checked, len(distinct)
