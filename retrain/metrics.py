"""The per-step metrics row written to ``metrics.jsonl`` (and wandb, and the console).

Field names are documented in docs/logs.md. Timing fields end in ``_s`` (seconds),
throughput fields in ``_per_s``; they are the only fields that differ between two runs
of the same config and seed.
"""

from __future__ import annotations

import resource
import sys
from typing import TYPE_CHECKING

import numpy as np

from retrain.advantages import correct_rate

if TYPE_CHECKING:
    from retrain.step import StepRecord


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def metrics_row(record: StepRecord, step_time_s: float, skipped_updates: int) -> dict[str, object]:
    """One flat JSON object describing step ``record.step``."""
    collected = record.collected
    samples = collected.samples
    rewards = collected.rewards_P_G
    lengths_N = samples.lengths_N
    completion_tokens = int(lengths_N.sum())
    timings = {**collected.timings, **record.timings}
    compute_s = timings.get("sample_time_s", 0.0) + timings.get("train_time_s", 0.0)
    row: dict[str, object] = {
        "step": record.step,
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "reward_min": float(rewards.min()),
        "reward_max": float(rewards.max()),
        "correct_rate": correct_rate(rewards),
        "prompts": int(rewards.shape[0]),
        "completions": int(rewards.size),
        "groups_informative": int(record.credit.informative_P.sum()),
        "groups_dropped": int((~record.credit.informative_P).sum()),
        "completion_tokens": completion_tokens,
        "sampled_tokens": int(samples.sampled_lengths_N.sum()),
        "completion_len_mean": float(lengths_N.mean()),
        "completion_len_max": int(lengths_N.max()) if lengths_N.size else 0,
        "truncated_rate": float(np.mean([reason == "length" for reason in samples.finish_reasons])),
        "loss": float(record.train.loss),
        "skipped": int(record.train.skipped),
        "skipped_updates": skipped_updates,
        "plugin_repaired_values": repaired_values(record),
        "policy_version": record.policy_version,
        "policy_staleness": record.staleness,
        **timings,
        "step_time_s": step_time_s,
        "overhead_time_s": max(0.0, step_time_s - compute_s),
        "overhead_frac": max(0.0, step_time_s - compute_s) / step_time_s if step_time_s > 0 else 0.0,
        "tokens_per_s": completion_tokens / step_time_s if step_time_s > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
    }
    extras: dict[str, object] = {
        **collected.counts,
        **samples.counts,
        **{key: float(value) for key, value in record.credit.metrics.items()},
        **{f"train/{key}" if key in _CLASHING else key: value for key, value in record.train.metrics.items()
           if key != "loss"},
    }
    # The step's own fields win over a stage's copy of the same number (the credit
    # stage's float group counts, the backend's policy version), so a field keeps one
    # meaning and one type in every row.
    row.update((key, value) for key, value in extras.items() if key not in row)
    return row


def repaired_values(record: StepRecord) -> int:
    """Values replaced under ``[plugins] strict = false`` this step: the credit stages'
    outputs, plus what the collection counted (``plugin_repaired_values`` in
    ``Collected.counts``: a custom reward's non-finite results scored 0.0)."""
    return record.credit.repaired_values + int(record.collected.counts.get("plugin_repaired_values", 0))


# Train metrics that would overwrite a step-level field of the same name.
# ``skipped_updates``: the backend counts only its own non-finite skips, the row every
# step without an update.
_CLASHING = frozenset({"step", "skipped", "skipped_updates", "completion_tokens", "step_time_s", "train_time_s"})
