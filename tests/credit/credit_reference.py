"""Slow, obviously correct per-token reference implementations of the credit math
(DESIGN §5), for checking the fast paths.

Plain Python loops over one completion at a time, on the sampled tokens only (a row's
values are given as the list of its sampled tokens; environment tokens are simply not in
it). The transform math is exact: every input float is turned into the ``Fraction`` it
stands for, so the reference rounds nothing and a comparison measures the fast code's
error alone. ``predictive_variance`` uses 100-digit decimals for ``exp``.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

GTPO_MEAN_FLOOR = Fraction(1e-7)
GTPO_EPS = Fraction(1e-8)


def exact(value: float) -> Fraction:
    return Fraction(float(value))


def grpo(rewards: list[float]) -> list[float]:
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


def maxrl(rewards: list[float]) -> list[float]:
    mean = sum(rewards) / len(rewards)
    if mean <= 1e-6:
        return [0.0 for _ in rewards]
    return [(r - mean) / (mean + 1e-6) for r in rewards]


def surprisal(logprobs: list[float]) -> list[float]:
    # A logprob above 0 (server rounding) means p = 1: surprisal 0.
    return [min(max(-lp, 0.0), 50.0) for lp in logprobs]


def predictive_variance(logprobs: list[float]) -> list[float]:
    """p (1 - p) with p = exp(min(l, 0)), from 100-digit decimals."""
    out = []
    with localcontext() as context:
        context.prec = 100  # 1 - p keeps 50 digits even for |l| near float32's smallest, 1e-45
        for lp in logprobs:
            if lp == -math.inf:
                out.append(0.0)
                continue
            p = Decimal(min(float(lp), 0.0)).exp()
            out.append(float(p * (1 - p)))
    return out


def sepa(uncertainty: list[Fraction], planning: list[bool], lam: Fraction) -> list[Fraction]:
    execution = [u for u, m in zip(uncertainty, planning) if not m]
    if not execution:
        return list(uncertainty)
    mean = sum(execution) / len(execution)
    return [u if m else lam * mean + (1 - lam) * u for u, m in zip(uncertainty, planning)]


def gtpo(advantage: Fraction, uncertainty: list[Fraction], beta: Fraction) -> list[Fraction]:
    if not uncertainty:
        return []
    mean = sum(uncertainty) / len(uncertainty)
    if beta == 0 or mean < GTPO_MEAN_FLOOR:
        return [advantage for _ in uncertainty]
    return [advantage * max(Fraction(0), 1 + beta * (u / (mean + GTPO_EPS) - 1)) for u in uncertainty]


def hicra(token_advantages: list[Fraction], planning: list[bool], alpha: Fraction) -> list[Fraction]:
    return [a + alpha * abs(a) if m else a for a, m in zip(token_advantages, planning)]


def top_rho_keep(group_uncertainty: list[list[float]], rho: float) -> list[list[bool]]:
    """Per completion of one group: keep tokens at or above the ceil(rho n)-th largest value."""
    values = sorted((u for row in group_uncertainty for u in row), reverse=True)
    if rho <= 0.0 or not values:
        return [[True] * len(row) for row in group_uncertainty]
    keep_count = math.ceil(round(rho * len(values), 9))
    threshold = values[keep_count - 1]
    return [[u >= threshold for u in row] for row in group_uncertainty]


def episode_advantages(rewards: list[list[float]], advantage: str) -> list[float]:
    """Flat, prompt-major episode advantages."""
    estimator = grpo if advantage == "grpo" else maxrl
    return [a for group in rewards for a in estimator(group)]


def token_advantages(
    episode: list[float],
    uncertainty: list[list[float]],
    planning: list[list[bool]],
    *,
    group_size: int,
    stages: tuple[str, ...],
    beta: float,
    alpha: float,
    lam: float,
    rho: float = 0.0,
) -> list[list[Fraction]]:
    """The composable transform, exactly, one completion and one token at a time.

    ``episode`` holds one advantage per completion; ``uncertainty[i]`` and ``planning[i]``
    the values of completion i's sampled tokens.
    """
    out = []
    for row, (advantage, values, marks) in enumerate(zip(episode, uncertainty, planning)):
        u = [exact(x) for x in values]
        a = [exact(advantage) for _ in u]
        for stage in stages:
            if stage == "sepa":
                u = sepa(u, marks, exact(lam))
            elif stage == "gtpo":
                weights = gtpo(Fraction(1), u, exact(beta))
                a = [x * w for x, w in zip(a, weights)]
            elif stage == "hicra":
                a = hicra(a, marks, exact(alpha))
        out.append(a)
    for start in range(0, len(out), group_size):
        keep = top_rho_keep(uncertainty[start:start + group_size], rho)
        for row, kept in enumerate(keep, start=start):
            out[row] = [x if k else Fraction(0) for x, k in zip(out[row], kept)]
    return out


def gtpo_error_bound(advantage: float, uncertainty: list[float], beta: float) -> list[float]:
    """The absolute part of the documented tolerance (retrain.transforms.compositions),
    ``2e-14 |A| (1 + beta (1 + u_t / ubar))``, taken at the row's largest ``u_t``: SEPA
    pooling moves the values but keeps their mean ``ubar``."""
    mean = sum(uncertainty) / len(uncertainty) if uncertainty else 0.0
    largest = max(uncertainty) / mean if mean > 0 else 0.0
    return [2e-14 * abs(advantage) * (1.0 + beta * (1.0 + largest)) for _ in uncertainty]


def overlapping_tokens(matches: list[tuple[int, int]], token_spans: list[tuple[int, int]]) -> list[bool]:
    """A token is marked when its span overlaps any match: start < match end and end > match start."""
    return [any(start < m_end and end > m_start for m_start, m_end in matches) for start, end in token_spans]


def ragged_batch(rows: list[list[float]], group_size: int, entropies: list[list[float]] | None = None,
                 width: int | None = None, environment: list[list[bool]] | None = None):
    """A SampleBatch whose completion i has the logprobs ``rows[i]`` (padding holds junk
    that every stage must ignore). ``environment[i][t]`` marks token t of row i as an
    environment token: real, but not sampled (loss mask False)."""
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
    loss_mask = mask.copy()
    for index, marks in enumerate(environment or []):
        loss_mask[index, : len(marks)] &= ~np.array(marks, dtype=bool)
    return SampleBatch(
        prompt_token_ids=[[1] for _ in range(count // group_size)],
        group_size=group_size,
        token_ids_N_T=np.zeros((count, width), dtype=np.int64),
        mask_N_T=mask,
        loss_mask_N_T=loss_mask,
        logprobs_N_T=logprobs,
        finish_reasons=["stop"] * count,
        texts=["" for _ in rows],
        entropies_N_T=entropy_array,
    )


def assert_close(actual, expected) -> None:
    """Fast (float32) equals reference to 1e-6, relative to the largest value of the
    completion: a float32 result cannot be closer than its own rounding (about 1e-7 of
    its magnitude)."""
    import numpy as np

    expected_array = np.asarray([float(x) for x in expected], dtype=np.float64)
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
