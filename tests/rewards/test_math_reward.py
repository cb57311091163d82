"""The math reward (retrain.rewards.math) and the optional-dependency check it uses."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from retrain.config.schema import Config, RewardConfig
from retrain.errors import ConfigError
from retrain.optional import require_module
from retrain.types import Example


def _example(reference: str) -> Example:
    return Example("e", ({"role": "user", "content": "q"},), reference)


def test_missing_optional_package_names_the_extra():
    with pytest.raises(ConfigError) as caught:
        require_module("retrain_no_such_package", "math", "reward", "type", "type = \"math\"")
    message = str(caught.value)
    assert "[reward].type" in message
    assert "retrain_no_such_package" in message
    assert "pip install 'retrain[math]'" in message


@pytest.mark.integration
def test_symbolic_equivalence():
    pytest.importorskip("math_verify")
    from retrain.rewards.math import MathReward

    reward = MathReward(Config(reward=RewardConfig(type="math")))
    cases = [
        (r"\frac{1}{2}", r"The answer is $\boxed{0.5}$", 1.0),
        (r"3\sqrt{2}", r"\boxed{\sqrt{18}}", 1.0),
        ("x^2+1", r"\boxed{1+x^2}", 1.0),
        ("7", "7", 1.0),
        ("7", "8", 0.0),
        ("5", r"I first thought 5, but \boxed{6}", 0.0),  # the box wins over earlier numbers
        ("5", "no answer at all {{{", 0.0),
    ]
    texts = [text for _, text, _ in cases]
    examples = [_example(reference) for reference, _, _ in cases]
    rewards = reward.score(texts, examples)
    assert rewards.dtype == np.float64
    assert rewards.tolist() == [expected for _, _, expected in cases]


@pytest.mark.integration
def test_scoring_off_the_main_thread():
    pytest.importorskip("math_verify")
    from retrain.rewards.math import MathReward

    reward = MathReward(Config(reward=RewardConfig(type="math")))
    results: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: results.append(reward.score([r"\boxed{2/4}"], [_example("0.5")])))
    worker.start()
    worker.join()
    assert results[0].tolist() == [1.0]


# A stand-in for math-verify whose comparison of an answer containing "hang" never ends
# and ignores every timer, like a computation stuck inside C code, and whose comparison
# of one containing "crash" ends the process, like a kill for memory.
FAKE_VERIFIER = '''
import os
import time


class LatexExtractionConfig:
    pass


class ExprExtractionConfig:
    pass


def parse(text, extraction_config=None, parsing_timeout=None):
    return [text] if text else []


def verify(gold, answer, timeout_seconds=None):
    if "hang" in answer[0]:
        time.sleep(600)
    if "crash" in answer[0]:
        os._exit(9)
    return gold[0] == answer[0]
'''


def _score_on_a_thread(reward, texts: list[str], examples: list[Example]) -> tuple[list[float], float]:
    results: list[np.ndarray] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: results.append(reward.score(texts, examples)))
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "scoring off the main thread did not return"
    return results[0].tolist(), time.monotonic() - started


def test_a_completion_past_the_deadline_scores_zero_off_the_main_thread(tmp_path, monkeypatch, caplog):
    from retrain.rewards.math import DEADLINE_FACTOR, MathReward

    (tmp_path / "never_ending_verifier.py").write_text(FAKE_VERIFIER)
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = MathReward(Config(reward=RewardConfig(type="math")), timeout_s=1, verifier="never_ending_verifier")
    texts = [r"\boxed{4}", r"\boxed{4 hang}", r"\boxed{4}"]
    with caplog.at_level("WARNING", logger="retrain.rewards.math"):
        rewards, elapsed = _score_on_a_thread(reward, texts, [_example("4")])
    # The stuck completion scores 0.0 and the helper that replaces it scores the next one.
    assert rewards == [1.0, 0.0, 1.0]
    assert elapsed < DEADLINE_FACTOR * 1 + 30  # the deadline, plus starting two helpers
    assert f"took more than {DEADLINE_FACTOR} s and was stopped; it scores 0.0: '\\\\boxed{{4 hang}}'" in caplog.text


def test_a_completion_that_kills_the_helper_scores_zero_and_the_next_helper_goes_on(tmp_path, monkeypatch, caplog):
    from retrain.rewards.math import MathReward

    (tmp_path / "crashing_verifier.py").write_text(FAKE_VERIFIER)
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = MathReward(Config(reward=RewardConfig(type="math")), timeout_s=1, verifier="crashing_verifier")
    with caplog.at_level("WARNING", logger="retrain.rewards.math"):
        rewards, _ = _score_on_a_thread(reward, [r"\boxed{4 crash}", r"\boxed{4}"], [_example("4")])
    assert rewards == [0.0, 1.0]
    assert "ended the helper process (exit code 9); it scores 0.0: '\\\\boxed{4 crash}'" in caplog.text


def test_the_helper_outlives_ctrl_c_and_sigterm_sent_to_the_whole_run(tmp_path, monkeypatch, caplog):
    # A terminal's Ctrl-C and a scheduler's SIGTERM reach every process of the group; the
    # run finishes its step on such a signal, and that step may still need the helper.
    import os
    import signal

    from retrain.rewards.math import MathReward

    (tmp_path / "plain_verifier.py").write_text(FAKE_VERIFIER)
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = MathReward(Config(reward=RewardConfig(type="math")), timeout_s=1, verifier="plain_verifier")
    assert _score_on_a_thread(reward, [r"\boxed{4}"], [_example("4")])[0] == [1.0]
    helper = reward._helper.process
    for signum in (signal.SIGINT, signal.SIGTERM):
        os.kill(helper.pid, signum)
    time.sleep(0.5)
    with caplog.at_level("WARNING", logger="retrain.rewards.math"):
        assert _score_on_a_thread(reward, [r"\boxed{4}", r"\boxed{5}"], [_example("4")])[0] == [1.0, 0.0]
    assert helper.is_alive() and reward._helper.process is helper and not caplog.text


def test_scoring_on_the_main_thread_stays_in_process(tmp_path, monkeypatch):
    from retrain.rewards.math import MathReward

    (tmp_path / "plain_verifier.py").write_text(FAKE_VERIFIER)
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = MathReward(Config(reward=RewardConfig(type="math")), verifier="plain_verifier")
    assert reward.score([r"\boxed{4}", r"\boxed{5}"], [_example("4")]).tolist() == [1.0, 0.0]
    assert reward._helper is None


@pytest.mark.integration
def test_a_pathological_completion_off_the_main_thread_scores_zero_in_time():
    pytest.importorskip("math_verify")
    from retrain.rewards.math import DEADLINE_FACTOR, MathReward

    # Comparing 9^(9^9) with 3 does not end in any useful time without a timer.
    reward = MathReward(Config(reward=RewardConfig(type="math")), timeout_s=1)
    rewards, elapsed = _score_on_a_thread(reward, [r"\boxed{9^{9^{9}}}", r"\boxed{2/4}"],
                                          [_example("3"), _example("0.5")])
    assert rewards == [0.0, 1.0]
    assert elapsed < DEADLINE_FACTOR * 1 + 30


@pytest.mark.parametrize(("completion", "reference", "expected"), [
    (r"\boxed{8} wait, no: \boxed{7}", "7", True),   # the last box is the answer
    (r"\boxed{8} wait, no: \boxed{7}", "8", False),
    (r"\boxed{}", "", False),                        # an empty answer never scores
    (r"\boxed{ }", "0", False),
    (r"\boxed{3}", " ", False),                      # nor does an empty reference
    ("The answer is 42.", "42", True),               # without a box, the text's final number counts
])
def test_the_last_box_is_the_answer_and_empty_never_scores(completion, reference, expected):
    math_verify = pytest.importorskip("math_verify")
    from retrain.rewards.math import equivalent

    assert equivalent(math_verify, completion, reference, 5, {})[0] is expected


@pytest.mark.parametrize(("completion", "reference"), [
    ("", "$ $"),          # no answer against a reference that is empty once normalized
    (r"\boxed{ $ $ }", "3"),
    (r"\boxed{}", "."),
])
def test_an_empty_answer_or_reference_never_scores_even_as_text(completion, reference):
    math_verify = pytest.importorskip("math_verify")
    from retrain.rewards.math import equivalent

    assert equivalent(math_verify, completion, reference, 5, {})[0] is False


# A stand-in for math-verify that cannot parse a reference holding "??" and counts its calls.
UNREADABLE_VERIFIER = '''
calls = []


class LatexExtractionConfig:
    pass


class ExprExtractionConfig:
    pass


def parse(text, extraction_config=None, parsing_timeout=None):
    calls.append(text)
    return [] if "??" in text else [text]
'''


def test_reference_problems_name_the_empty_and_the_unparsable_references(tmp_path, monkeypatch):
    import importlib

    from retrain.rewards.math import MathReward

    (tmp_path / "unreadable_verifier.py").write_text(UNREADABLE_VERIFIER)
    monkeypatch.syspath_prepend(str(tmp_path))
    references = ["12", "", "a??", r"\frac{1}{2}", "a??", " . ", "-3.5"]
    problems = MathReward.reference_problems(references, verifier="unreadable_verifier")
    assert [(problem.indices, problem.unusable) for problem in problems] == [((1, 5), True), ((2, 4), False)]
    assert "math-verify cannot parse, which the math reward compares as text" in problems[1].problem
    assert "found among" not in problems[1].problem
    # Each distinct reference is parsed once; plain numbers and empty ones not at all.
    assert importlib.import_module("unreadable_verifier").calls == [r"\boxed{a??}", r"\boxed{\frac{1}{2}}"]


def test_the_parse_check_stops_at_its_time_budget_and_says_so(tmp_path, monkeypatch):
    from retrain.rewards.math import MathReward

    (tmp_path / "budget_verifier.py").write_text(UNREADABLE_VERIFIER)
    monkeypatch.syspath_prepend(str(tmp_path))
    # With no time at all, only the first distinct reference is parsed.
    problems = MathReward.reference_problems(["a??", "b??", "c", "a??"], budget_s=0, verifier="budget_verifier")
    assert [problem.indices for problem in problems] == [(0, 3)]
    assert "found among the first 1 of 3 distinct references, all that 0 s could check" in problems[0].problem


def test_real_math_verify_reads_ordinary_answers_and_not_broken_ones():
    pytest.importorskip("math_verify")
    from retrain.rewards.math import MathReward

    references = ["7", r"\frac{1}{2}", r"3\sqrt{2}", "(1, 2)", "x^2+1", "}{", "$"]
    problems = MathReward.reference_problems(references, budget_s=60)
    assert [(problem.indices, problem.unusable) for problem in problems] == [((5, 6), False)]
