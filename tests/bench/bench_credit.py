"""Benchmark of the credit-assignment pipeline and the regex planning detector.

Workload: 8 prompts x 16 completions x 10,240 tokens (1.31 M tokens), MaxRL advantages,
the ``gtpo_sepa`` and ``gtpo_hicra`` transforms with a planning mask, for the
``surprisal`` and ``predictive_variance`` uncertainties; and the regex planning
detector over the same 128 completions' text. Targets on a 2-core CPU: <= 100 ms per
pipeline step (>= 13 M tokens/s) and <= 0.5 s for the detector.

Run: ``python tests/bench/bench_credit.py [--repeats 7]``. Prints the median and best
time of each case; exits 1 when a median misses its target.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import numpy as np

from retrain.config.schema import AlgorithmConfig, Config, SEPAConfig
from retrain.credit import build_credit_pipeline
from retrain.planning import DEFAULT_STRATEGIC_GRAMS, RegexPlanningDetector
from retrain.types import SampleBatch

PROMPTS, GROUP, TOKENS = 8, 16, 10_240
PIPELINE_TARGET_S = 0.100
DETECTOR_TARGET_S = 0.5
WORDS = (
    "the of and to in is that for it as with was on be by this are or from at which an so we can if then "
    "let x y equation value sum number term both sides multiply divide add subtract square root factor prime "
    "solve find compute result answer total equals gives therefore since because first next finally check"
).split()


def make_batch(seed: int = 0) -> SampleBatch:
    """128 full-length completions: one word per token, a strategic gram every ~200 words."""
    rng = np.random.default_rng(seed)
    rows = PROMPTS * GROUP
    texts, spans = [], []
    for _ in range(rows):
        words = list(rng.choice(WORDS, size=TOKENS))
        for position in rng.integers(0, TOKENS - 4, size=TOKENS // 200):
            gram = DEFAULT_STRATEGIC_GRAMS[int(rng.integers(len(DEFAULT_STRATEGIC_GRAMS)))].split()
            words[position: position + len(gram)] = gram
        words = words[:TOKENS]
        pieces = [" " + word if index else word for index, word in enumerate(words)]
        lengths = np.fromiter((len(piece) for piece in pieces), dtype=np.int64, count=len(pieces))
        ends = np.cumsum(lengths)
        spans.append(list(zip((ends - lengths).tolist(), ends.tolist())))
        texts.append("".join(pieces))
    return SampleBatch(
        prompt_token_ids=[[1, 2, 3]] * PROMPTS,
        group_size=GROUP,
        token_ids_N_T=rng.integers(0, 50_000, size=(rows, TOKENS)),
        mask_N_T=np.ones((rows, TOKENS), dtype=bool),
        loss_mask_N_T=np.ones((rows, TOKENS), dtype=bool),
        logprobs_N_T=(-rng.exponential(0.7, size=(rows, TOKENS))).astype(np.float32),
        finish_reasons=["length"] * rows,
        texts=texts,
        token_char_spans=spans,
    )


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    batch = make_batch()
    tokens = int(batch.mask_N_T.sum())
    rng = np.random.default_rng(1)
    rewards = (rng.random((PROMPTS, GROUP)) < 0.4).astype(np.float64)
    ok = True

    detector = RegexPlanningDetector()
    planning = detector.detect(batch.texts, batch.token_char_spans)
    times = timed(lambda: detector.detect(batch.texts, batch.token_char_spans), args.repeats)
    characters = sum(len(text) for text in batch.texts)
    median = statistics.median(times)
    ok &= median <= DETECTOR_TARGET_S
    print(f"regex planning detector: {len(batch.texts)} completions, {characters / 1e6:.2f} M chars, "
          f"{planning.mean():.4f} planning fraction: median {median * 1e3:.1f} ms, best {min(times) * 1e3:.1f} ms "
          f"(target <= {DETECTOR_TARGET_S * 1e3:.0f} ms) {'ok' if median <= DETECTOR_TARGET_S else 'MISSED'}")

    for transform in ("gtpo_sepa", "gtpo_hicra"):
        for uncertainty in ("surprisal", "predictive_variance"):
            config = dataclasses.replace(
                Config(),
                algorithm=AlgorithmConfig(advantage_mode="maxrl", transform_mode=transform, uncertainty_kind=uncertainty),
                # Gate open and lambda mid-ramp, so SEPA really pools.
                sepa=SEPAConfig(steps=100, delay_steps=0, correct_rate_gate=0.0),
            )
            pipeline = build_credit_pipeline(config)
            step = iter(range(10**9))
            pipeline(rewards, batch, planning, step=50)
            times = timed(lambda: pipeline(rewards, batch, planning, step=50 + next(step) % 10), args.repeats)
            median = statistics.median(times)
            ok &= median <= PIPELINE_TARGET_S
            print(f"maxrl+{transform:<10} {uncertainty:<19}: median {median * 1e3:6.1f} ms, best {min(times) * 1e3:6.1f} ms, "
                  f"{tokens / median / 1e6:5.1f} M tokens/s (target <= {PIPELINE_TARGET_S * 1e3:.0f} ms) "
                  f"{'ok' if median <= PIPELINE_TARGET_S else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
