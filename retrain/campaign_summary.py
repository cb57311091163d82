"""A campaign's summary: for each condition, statistics across its seeds' runs, printed
and written as ``summary.json`` and ``summary.md`` in the campaign folder.

Per run, from its ``metrics.jsonl``:

- final reward: the mean ``reward_mean`` over the last ``WINDOW`` steps;
- best reward: the largest mean over any ``WINDOW`` consecutive steps;
- correct rate: the mean ``correct_rate`` over the last ``WINDOW`` steps;
- steps to threshold: the last step of the first window whose mean reward reaches
  ``[campaign] reward_threshold`` (None when no window does);
- steps/s: steps divided by the sum of ``step_time_s``.

Per condition: the mean and sample standard deviation of each figure across seeds, and a
95% confidence interval of the mean, mean ± t(0.975, n−1)·s/√n (Student's t; a single seed
has no interval).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from retrain.atomic import write_atomic
from retrain.campaign import Campaign, CampaignRun

WINDOW = 20
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
FIGURES = ("final_reward", "best_reward", "correct_rate", "steps_to_threshold", "steps_per_s")
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond, the normal's.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def window_means(values: list[float], window: int = WINDOW) -> list[float]:
    """Mean of each run of ``window`` consecutive values (of all of them when fewer)."""
    if not values:
        return []
    width = min(window, len(values))
    return [sum(values[start:start + width]) / width for start in range(len(values) - width + 1)]


def _column(rows: list[dict[str, object]], key: str) -> list[float]:
    return [float(value) for row in rows if isinstance(value := row.get(key), (int, float))]


def run_figures(rows: list[dict[str, object]], threshold: float) -> dict[str, float | None]:
    rewards, correct, times = _column(rows, "reward_mean"), _column(rows, "correct_rate"), _column(rows, "step_time_s")
    means = window_means(rewards)
    width = min(WINDOW, len(rewards))
    reached = next((index + width for index, mean in enumerate(means) if mean >= threshold), None)
    return {
        "final_reward": means[-1] if means else None,
        "best_reward": max(means) if means else None,
        "correct_rate": window_means(correct)[-1] if correct else None,
        "steps_to_threshold": float(reached) if reached is not None else None,
        "steps_per_s": len(times) / sum(times) if times and sum(times) > 0 else None,
    }


def across_seeds(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample std and the 95% interval of the mean of ``values``."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95_low": None, "ci95_high": None}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci95_low": None, "ci95_high": None}
    std = math.sqrt(sum((value - mean) ** 2 for value in values) / (n - 1))
    half = (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def _rows(run: CampaignRun) -> list[dict[str, object]]:
    from retrain.sinks.jsonl import read_rows

    return [dict(row) for row in read_rows(run.log_dir / "metrics.jsonl", warn_torn=False)]


def summarize(campaign: Campaign) -> dict[str, object]:
    threshold = campaign.settings.reward_threshold
    conditions: dict[str, dict[str, object]] = {}
    for run in campaign.runs:
        figures = run_figures(_rows(run), threshold)
        entry = conditions.setdefault(run.condition, {"runs": {}})
        runs = entry["runs"]
        assert isinstance(runs, dict)
        runs[run.name] = figures
    for entry in conditions.values():
        runs = entry["runs"]
        assert isinstance(runs, dict)
        for figure in FIGURES:
            values = [float(value) for figures in runs.values() if (value := figures[figure]) is not None]
            entry[figure] = across_seeds(values)
        reached = sum(1 for figures in runs.values() if figures["steps_to_threshold"] is not None)
        entry["reached_threshold"] = f"{reached}/{len(runs)}"
    return {"campaign": campaign.name, "window": WINDOW, "reward_threshold": threshold, "conditions": conditions}


def _cell(stats: object, digits: int = 3) -> str:
    if not isinstance(stats, dict) or stats.get("mean") is None:
        return "—"
    text = f"{stats['mean']:.{digits}f}"
    if stats.get("std") is not None:
        text += f" ± {stats['std']:.{digits}f} [{stats['ci95_low']:.{digits}f}, {stats['ci95_high']:.{digits}f}]"
    return text


def summary_markdown(summary: dict[str, object]) -> str:
    conditions = summary["conditions"]
    assert isinstance(conditions, dict)
    lines = [f"# Campaign {summary['campaign']}", "",
             f"Mean ± std across seeds [95% interval of the mean]; rewards are means over {summary['window']}-step "
             f"windows; threshold {summary['reward_threshold']}.", "",
             "| condition | seeds | final reward | best reward | correct rate | steps to threshold | reached | steps/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, entry in conditions.items():
        seeds = len(entry["runs"])
        lines.append(f"| {name} | {seeds} | {_cell(entry['final_reward'])} | {_cell(entry['best_reward'])} | "
                     f"{_cell(entry['correct_rate'])} | {_cell(entry['steps_to_threshold'], 1)} | "
                     f"{entry['reached_threshold']} | {_cell(entry['steps_per_s'], 2)} |")
    return "\n".join(lines) + "\n"


def write_summary(campaign: Campaign, directory: Path | None = None) -> dict[str, object]:
    """Compute, print and write the summary (atomically)."""
    summary = summarize(campaign)
    folder = directory or campaign.directory
    write_atomic(folder / SUMMARY_JSON, json.dumps(summary, indent=1) + "\n")
    text = summary_markdown(summary)
    write_atomic(folder / SUMMARY_MD, text)
    print(text, end="")
    return summary
