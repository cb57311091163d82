"""Slow, obviously correct per-token reference implementations of the credit math
(DESIGN §5), written with plain Python loops and floats, for checking the fast paths."""

from __future__ import annotations

import math


def grpo(rewards: list[float]) -> list[float]:
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


def maxrl(rewards: list[float]) -> list[float]:
    mean = sum(rewards) / len(rewards)
    if mean <= 1e-6:
        return [0.0 for _ in rewards]
    return [(r - mean) / (mean + 1e-6) for r in rewards]


def surprisal(logprobs: list[float]) -> list[float]:
    return [min(-lp, 50.0) for lp in logprobs]


def predictive_variance(logprobs: list[float]) -> list[float]:
    out = []
    for lp in logprobs:
        p = math.exp(lp)
        out.append(p * (1.0 - p))
    return out


def sepa(uncertainty: list[float], planning: list[bool], lam: float) -> list[float]:
    execution = [u for u, m in zip(uncertainty, planning) if not m]
    if not execution:
        return list(uncertainty)
    mean = sum(execution) / len(execution)
    return [u if m else lam * mean + (1.0 - lam) * u for u, m in zip(uncertainty, planning)]


def gtpo(advantage: float, uncertainty: list[float], beta: float) -> list[float]:
    if not uncertainty:
        return []
    mean = sum(uncertainty) / len(uncertainty)
    if beta == 0.0 or mean < 1e-7:
        return [advantage for _ in uncertainty]
    return [advantage * max(0.0, 1.0 + beta * (u / (mean + 1e-8) - 1.0)) for u in uncertainty]


def hicra(token_advantages: list[float], planning: list[bool], alpha: float) -> list[float]:
    return [a + alpha * abs(a) if m else a for a, m in zip(token_advantages, planning)]


def top_rho_keep(group_uncertainty: list[list[float]], rho: float) -> list[list[bool]]:
    """Per completion of one group: keep tokens at or above the ceil(rho n)-th largest value."""
    values = sorted((u for row in group_uncertainty for u in row), reverse=True)
    if rho <= 0.0 or not values:
        return [[True] * len(row) for row in group_uncertainty]
    keep_count = math.ceil(round(rho * len(values), 9))
    threshold = values[keep_count - 1]
    return [[u >= threshold for u in row] for row in group_uncertainty]


def token_advantages(
    rewards: list[list[float]],
    uncertainty: list[list[float]],
    planning: list[list[bool]],
    *,
    advantage: str,
    stages: tuple[str, ...],
    beta: float,
    alpha: float,
    lam: float,
    rho: float = 0.0,
) -> list[list[float]]:
    """The whole composable pipeline, one completion and one token at a time."""
    estimator = grpo if advantage == "grpo" else maxrl
    group_size = len(rewards[0])
    out = []
    for prompt, group_rewards in enumerate(rewards):
        episode = estimator(group_rewards)
        rows = range(prompt * group_size, (prompt + 1) * group_size)
        group_tokens = []
        for g, row in enumerate(rows):
            u = list(uncertainty[row])
            a = [episode[g] for _ in u]
            for stage in stages:
                if stage == "sepa":
                    u = sepa(u, planning[row], lam)
                elif stage == "gtpo":
                    weights = gtpo(1.0, u, beta)
                    a = [x * w for x, w in zip(a, weights)]
                elif stage == "hicra":
                    a = hicra(a, planning[row], alpha)
            group_tokens.append(a)
        keep = top_rho_keep([list(uncertainty[row]) for row in rows], rho)
        for tokens, kept in zip(group_tokens, keep):
            out.append([x if k else 0.0 for x, k in zip(tokens, kept)])
    return out


def overlapping_tokens(matches: list[tuple[int, int]], token_spans: list[tuple[int, int]]) -> list[bool]:
    """A token is marked when its span overlaps any match: start < match end and end > match start."""
    return [any(start < m_end and end > m_start for m_start, m_end in matches) for start, end in token_spans]


def ragged_batch(rows: list[list[float]], group_size: int, entropies: list[list[float]] | None = None,
                 width: int | None = None):
    """A SampleBatch whose completion i has the logprobs ``rows[i]`` (padding holds junk
    that every stage must ignore)."""
    import numpy as np

    from retrain.types import SampleBatch

    width = max([len(row) for row in rows] + [0]) if width is None else width
    count = len(rows)
    mask = np.zeros((count, width), dtype=bool)
    logprobs = np.full((count, width), np.nan, dtype=np.float32)
    entropy_array = np.full((count, width), np.nan, dtype=np.float32) if entropies is not None else None
    for index, row in enumerate(rows):
        mask[index, : len(row)] = True
        logprobs[index, : len(row)] = row
        if entropy_array is not None:
            entropy_array[index, : len(row)] = entropies[index]
    return SampleBatch(
        prompt_token_ids=[[1] for _ in range(count // group_size)],
        group_size=group_size,
        token_ids_N_T=np.zeros((count, width), dtype=np.int64),
        mask_N_T=mask,
        loss_mask_N_T=mask.copy(),
        logprobs_N_T=logprobs,
        finish_reasons=["stop"] * count,
        texts=["" for _ in rows],
        entropies_N_T=entropy_array,
    )


def assert_close(actual, expected) -> None:
    """Fast (float32) equals reference (float64) to 1e-6, relative to the largest value of
    the completion: a float32 result cannot be closer than its own rounding (about 1e-7
    of its magnitude), and GTPO weights near 0 cancel terms of the size of beta."""
    import numpy as np

    expected_array = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected_array).max(initial=0.0)))
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected_array, rtol=1e-6, atol=1e-6 * scale)


def find_grams(grams: list[str], text: str) -> set[tuple[int, int]]:
    """Every (start, end) where a gram occurs: tried at every start position, the longest
    gram first; words separated by whitespace or hyphens, any case, on word boundaries."""
    import re

    def word_char(index: int) -> bool:
        return 0 <= index < len(text) and (text[index].isalnum() or text[index] == "_")

    found = set()
    for start in range(len(text)):
        if word_char(start - 1):
            continue
        for gram in sorted(grams, key=len, reverse=True):
            words = [re.escape(word).replace("'", "['\u2019]") for word in gram.lower().split()]
            match = re.compile(r"[\s\-]+".join(words), re.IGNORECASE).match(text, start)
            if match and not word_char(match.end()):
                found.add(match.span())
                break
    return found
