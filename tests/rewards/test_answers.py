"""Final-answer extraction and normalization (retrain.rewards.answers)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from retrain.rewards.answers import final_answer, last_boxed, normalize_answer


def test_last_boxed_keeps_nested_braces():
    assert last_boxed(r"so $x = \boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{\sqrt{\frac{a}{b^{2}}}}") == r"\sqrt{\frac{a}{b^{2}}}"


def test_last_boxed_takes_the_last_box():
    assert last_boxed(r"first \boxed{3}, then corrected: \boxed{4}") == "4"


def test_last_boxed_escaped_braces_do_not_count():
    # "\{" and "\}" are literal braces in LaTeX; the group closes at the final "}".
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"


def test_last_boxed_other_spellings():
    assert last_boxed(r"the answer is \fbox{12}") == "12"
    assert last_boxed(r"$\boxed 5$") == "5"
    assert last_boxed(r"\boxed {7}") == "7"


def test_last_boxed_none_when_absent_or_unclosed():
    assert last_boxed("no box here") is None
    assert last_boxed(r"\boxed{\frac{1}{2}") is None  # truncated completion
    assert last_boxed(r"\boxedanswer{3}") is None  # some other command


def test_final_answer_falls_back_to_stripped_text():
    assert final_answer("  7\n") == "7"
    assert final_answer(r"work... \boxed{9}") == "9"


def test_normalize_answer():
    assert normalize_answer(" $7$. ") == "7"
    assert normalize_answer("$$x = 3$$") == "x=3"
    assert normalize_answer(r"\(1, 2\)") == "1,2"
    assert normalize_answer("$5.$") == "5"
    assert normalize_answer("0.5.") == "0.5"
    # Case and LaTeX spelling are kept.
    assert normalize_answer("A") != normalize_answer("a")
    assert normalize_answer(r"\frac12") != normalize_answer("0.5")


_plain = st.text(alphabet=st.characters(blacklist_characters="{}\\", blacklist_categories=("Cs",)), max_size=30)


@given(prefix=_plain, answer=_plain, suffix=_plain)
def test_last_boxed_round_trips_any_brace_free_answer(prefix, answer, suffix):
    assert last_boxed(prefix + r" \boxed{" + answer + "}" + suffix) == answer


@given(inner=_plain, depth=st.integers(min_value=0, max_value=5))
def test_last_boxed_round_trips_nested_groups(inner, depth):
    answer = "{" * depth + inner + "}" * depth
    assert last_boxed(r"\boxed{" + answer + "}") == answer


@given(text=st.text(max_size=40))
def test_normalize_answer_is_idempotent(text):
    once = normalize_answer(text)
    assert normalize_answer(once) == once
