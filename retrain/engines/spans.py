"""Character spans of sampled tokens in their decoded text (no torch: HTTP engines use
it too). Planning detectors match phrases in the text and map them back to tokens
through these spans. Also the end-of-turn ids sampling stops on."""

from __future__ import annotations

import itertools
import json
from pathlib import Path


class SpanDecoder:
    """Maps each token of a decoded completion to its (start, end) character span.

    Pieces (single decoded tokens) are cached per token id. When they concatenate to the
    decoded text, as for character-level and most byte-level BPE output, spans follow
    from their lengths. Otherwise (a character split over several byte tokens, or
    leading-space markers that decode differently inside a text) each token's span is
    what it adds to the decoded prefix, at one decode per token.
    """

    def __init__(self, tokenizer) -> None:  # tokenizer: transformers.PreTrainedTokenizerBase
        self.tokenizer = tokenizer
        self._pieces: dict[int, str] = {}

    def batch_spans(self, rows: list[list[int]], texts: list[str]) -> list[list[tuple[int, int]]]:
        """``char_spans`` for many completions; one string comparison checks them all when
        every completion's pieces have the length of its text."""
        pieces = [[self._piece(token) for token in ids] for ids in rows]
        lengths = [[len(piece) for piece in row] for row in pieces]
        if all(sum(row) == len(text) for row, text in zip(lengths, texts)) and \
                "".join("".join(row) for row in pieces) == "".join(texts):
            return [_running_spans(row) for row in lengths]
        return [self.char_spans(ids, text) for ids, text in zip(rows, texts)]

    def char_spans(self, token_ids: list[int], text: str) -> list[tuple[int, int]]:
        """Spans of ``token_ids`` in ``text`` (their decoding with special tokens removed,
        which get empty spans)."""
        pieces = [self._piece(token) for token in token_ids]
        if "".join(pieces) == text:
            return _running_spans([len(piece) for piece in pieces])
        return self._incremental_spans(token_ids, text)

    def _piece(self, token: int) -> str:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._decode([token])
            self._pieces[token] = piece
        return piece

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _incremental_spans(self, token_ids: list[int], text: str) -> list[tuple[int, int]]:
        spans = []
        previous = 0
        for end in range(1, len(token_ids) + 1):
            if end == len(token_ids):
                stop = len(text)
            else:
                # An incomplete multi-byte character decodes to U+FFFD until its last byte.
                stop = len(self._decode(token_ids[:end]).rstrip("\ufffd"))
            stop = max(previous, min(stop, len(text)))
            spans.append((previous, stop))
            previous = stop
        return spans


def _running_spans(lengths: list[int]) -> list[tuple[int, int]]:
    ends = list(itertools.accumulate(lengths))
    return [(end - length, end) for end, length in zip(ends, lengths)]


def end_of_turn_ids(tokenizer: object, model_path: str) -> tuple[int, ...]:
    """The tokenizer's end-of-sequence id and the model's generation-config ones."""
    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.append(eos)
    config_file = Path(model_path) / "generation_config.json"
    if config_file.is_file():
        configured = json.loads(config_file.read_text()).get("eos_token_id")
        for token in configured if isinstance(configured, list) else [configured]:
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return tuple(ids)
