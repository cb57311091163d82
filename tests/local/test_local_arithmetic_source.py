"""The arithmetic prompt source: honest prompts, exact references, seeded order."""

from __future__ import annotations

from retrain.config.schema import Config, TrainingConfig
from retrain.data.arithmetic import ArithmeticSource


def examples(seed: int = 0, max_examples: int = 0):
    return ArithmeticSource(Config(training=TrainingConfig(seed=seed, max_examples=max_examples))).examples()


def test_every_problem_once_with_its_exact_answer() -> None:
    found = examples()
    assert len(found) == 100
    assert len({e.example_id for e in found}) == 100
    for example in found:
        a, b = example.metadata["a"], example.metadata["b"]
        assert example.messages == ({"role": "user", "content": f"{a}+{b} mod 10="},)
        assert example.reference == str((a + b) % 10)


def test_hand_checked_examples() -> None:
    by_id = {e.example_id: e for e in examples()}
    # 7 + 8 = 15, and 15 mod 10 = 5.
    assert by_id["arithmetic-7+8"].reference == "5"
    # 9 + 1 = 10, and 10 mod 10 = 0.
    assert by_id["arithmetic-9+1"].reference == "0"
    assert by_id["arithmetic-2+3"].messages[0]["content"] == "2+3 mod 10="


def test_order_is_fixed_by_the_seed() -> None:
    assert [e.example_id for e in examples(seed=3)] == [e.example_id for e in examples(seed=3)]
    assert [e.example_id for e in examples(seed=3)] != [e.example_id for e in examples(seed=4)]
    # seed = -1 (no fixed seed) still gives a reproducible list: seed 0's.
    assert [e.example_id for e in examples(seed=-1)] == [e.example_id for e in examples(seed=0)]


def test_max_examples_takes_a_prefix_of_the_order() -> None:
    assert [e.example_id for e in examples(max_examples=7)] == [e.example_id for e in examples()][:7]
