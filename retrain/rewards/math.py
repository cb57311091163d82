"""The ``math`` reward: 1.0 when the completion's answer is mathematically equivalent to
the reference.

Equivalence is decided by the ``math-verify`` package (``pip install 'retrain[math]'``):
both the reference and the completion are parsed from LaTeX or plain expressions into
sympy objects and compared symbolically (``\\frac{1}{2}`` = ``0.5``, ``1+x^2`` =
``x^2+1``, ``\\sqrt{18}`` = ``3\\sqrt{2}``), with the completion's last ``\\boxed{...}``
taking priority. A reference math-verify cannot parse falls back to the ``match``
comparison for that example (logged once), so an odd reference never silently scores 0.

math-verify bounds each parse and comparison with a SIGALRM timer, which Python only
allows on the main thread; scoring from another thread runs without that timer.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType

import numpy as np

from retrain.config.schema import Config
from retrain.optional import require_module
from retrain.rewards.answers import final_answer, normalize_answer
from retrain.rewards.base import examples_per_completion
from retrain.types import Example

logger = logging.getLogger(__name__)

# Seconds math-verify may spend parsing or comparing one answer (main thread only).
TIMEOUT_S = 5


class MathReward:
    """Symbolic equivalence of the completion's answer and the reference (math-verify)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._math_verify: ModuleType = require_module(
            "math_verify", "math", "reward", "type", "type = \"math\""
        )
        self._gold_cache: dict[str, list[object]] = {}
        self._unparsable_references: set[str] = set()

    def _timeout(self) -> int | None:
        return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None

    def _gold(self, reference: str) -> list[object]:
        # Completions of one prompt share a reference: parse it once per run.
        if reference not in self._gold_cache:
            mv = self._math_verify
            self._gold_cache[reference] = mv.parse(
                "\\boxed{" + reference + "}",
                extraction_config=[mv.LatexExtractionConfig(), mv.ExprExtractionConfig()],
                parsing_timeout=self._timeout(),
            )
        return self._gold_cache[reference]

    def _equivalent(self, text: str, reference: str) -> bool:
        gold = self._gold(reference)
        if not gold:
            if reference not in self._unparsable_references:
                self._unparsable_references.add(reference)
                logger.warning("math-verify cannot parse the reference %r; comparing it as a string", reference)
            return normalize_answer(final_answer(text)) == normalize_answer(reference)
        answer = self._math_verify.parse(text, parsing_timeout=self._timeout())
        if not answer:
            return False
        return bool(self._math_verify.verify(gold, answer, timeout_seconds=self._timeout()))

    def score(self, texts: list[str], examples: list[Example]) -> np.ndarray:
        aligned = examples_per_completion(texts, examples)
        rewards_N = np.zeros(len(texts), dtype=np.float64)
        for index, (text, example) in enumerate(zip(texts, aligned)):
            if self._equivalent(text, example.reference):
                rewards_N[index] = 1.0
        return rewards_N
