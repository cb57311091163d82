"""The embedded offline prompt source: single-digit addition modulo 10.

Every prompt asks for ``(a + b) mod 10`` with ``a, b`` in 0..9, written as
``"3+9 mod 10="``; the reference is the single digit ``"2"``. The task is small enough
for the built-in tiny model (``retrain/tiny``) to learn from rewards alone in a few
minutes on a CPU, and the answer is checked exactly (``[reward] type = "match"``
compares the stripped completion with the reference).

The prompt text is shared with the tiny model's format-only warm start
(``retrain.models.tiny``), which teaches "one digit, then end of turn" with random
digits, so the model knows the answer format but not the arithmetic when RL begins.
"""

from __future__ import annotations

import random

from retrain.config.schema import Config
from retrain.types import Example

MODULUS = 10


def arithmetic_prompt(a: int, b: int) -> str:
    """The user-turn text asking for ``(a + b) mod 10``."""
    return f"{a}+{b} mod {MODULUS}="


def arithmetic_answer(a: int, b: int) -> str:
    """The exact completion text expected for ``arithmetic_prompt(a, b)``."""
    return str((a + b) % MODULUS)


def all_pairs() -> list[tuple[int, int]]:
    """Every operand pair, in a fixed order: (0, 0), (0, 1), ..., (9, 9)."""
    return [(a, b) for a in range(MODULUS) for b in range(MODULUS)]


class ArithmeticSource:
    """All 100 single-digit addition problems, in an order fixed by ``[training] seed``.

    A seed of -1 (no fixed seed) uses the order of seed 0, so the example list is always
    reproducible; the run loop does its own seeded shuffling on top.
    """

    def __init__(self, config: Config) -> None:
        self.seed = max(config.training.seed, 0)
        self.max_examples = config.training.max_examples

    def examples(self) -> list[Example]:
        pairs = all_pairs()
        random.Random(self.seed).shuffle(pairs)
        if self.max_examples:
            pairs = pairs[: self.max_examples]
        return [
            Example(
                example_id=f"arithmetic-{a}+{b}",
                messages=({"role": "user", "content": arithmetic_prompt(a, b)},),
                reference=arithmetic_answer(a, b),
                metadata={"a": a, "b": b},
            )
            for a, b in pairs
        ]
