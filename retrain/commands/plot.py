"""``retrain plot DIR [-o FILE.png]``: reward and correct-rate curves of a run or a campaign.

For a run folder: ``reward_mean`` and ``correct_rate`` against the step. For a campaign
folder: per condition, the mean over its seeds at each step, with a band from the lowest
to the highest seed at that step (min–max rather than ±std: a campaign has a few seeds
per condition, too few for a standard deviation to mean much, and the band then shows
every seed). A step some seeds have not reached yet is the mean of those that have.

With ``-o FILE.png``, a PNG with one panel per metric (matplotlib, imported only then),
written atomically. Without it, a terminal summary: per metric, one unicode sparkline
per run or condition, all on one scale so that they compare, with the first, last and
best values.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

from retrain.atomic import write_atomic
from retrain.errors import RetrainError, UsageError
from retrain.run_index import (
    CONFIG_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    read_campaign,
    read_rows,
)

DESCRIPTION = "plot reward and correct-rate curves of a run or campaign (PNG, or sparklines in the terminal)"

METRICS = ("reward_mean", "correct_rate")
AXIS_LABELS = {"reward_mean": "reward (mean over the step)", "correct_rate": "correct rate"}
SPARKS = "▁▂▃▄▅▆▇█"
SPARKLINE_WIDTH = 40
# Steps a curve is averaged over by default: the window of the campaign summary's figures.
WINDOW = 20
# 10 x 4 inches at 100 dpi: a 1000 x 400 pixel image.
FIGURE_INCHES = (10.0, 4.0)
FIGURE_DPI = 100


@dataclass
class Curve:
    """One line of a panel: the mean over ``seeds`` runs at each step, the lowest and
    highest run there (equal to the mean for a single run), and how many runs have the
    step (fewer than ``seeds`` where some have not reached it)."""

    label: str
    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    counts: list[int]
    seeds: int


@dataclass
class Plot:
    title: str
    is_campaign: bool
    curves: dict[str, list[Curve]]  # metric -> one curve per run or condition


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"plot: {message} (see `retrain plot --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="retrain plot", description=f"{DESCRIPTION}. A campaign's curves are the mean over the "
                     "seeds of each condition, its band their min–max.")
    parser.add_argument("dir", metavar="DIR", help="a run's log_dir, or a campaign folder (it holds manifest.json)")
    parser.add_argument("-o", "--output", metavar="FILE.png", help="write a PNG here instead of printing sparklines")
    parser.add_argument("--window", metavar="STEPS", type=_window, default=WINDOW,
                        help=f"plot each run's mean over its last STEPS steps (default {WINDOW}, as the campaign "
                             "summary; 1 = the raw per-step values)")
    return parser


def _window(text: str) -> int:
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise argparse.ArgumentTypeError(f"--window takes a whole number of steps >= 1, not {text!r}")
    return steps


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    output = Path(args.output) if args.output else None
    if output is not None:
        check_output(output)
    plot = load_plot(Path(args.dir), args.window)
    if output is None:
        sys.stdout.write(sparkline_text(plot))
        return 0
    write_png(plot, output)
    print(f"wrote {output} ({plot.title})")
    return 0


def check_output(output: Path) -> None:
    """Refuses, before any reading, an output the PNG cannot go to."""
    if output.suffix.lower() != ".png":
        raise UsageError(f"plot: -o {output}: the plot is written as PNG — give a file name ending in .png")
    if output.is_dir():
        raise UsageError(f"plot: -o {output} is a folder — give a file name ending in .png")
    if not output.absolute().parent.is_dir():
        raise UsageError(f"plot: -o {output}: the folder {output.absolute().parent} does not exist — create it first")


def load_plot(folder: Path, window: int = 1) -> Plot:
    """The curves of the run or campaign in ``folder``, each run's values averaged over
    its last ``window`` steps."""
    if (folder / MANIFEST_FILE).is_file():
        return campaign_plot(folder, window)
    if any((folder / name).exists() for name in (METRICS_FILE, CONFIG_FILE, LOCK_FILE)):
        return run_plot(folder, window)
    if not folder.exists():
        raise RetrainError(f"{folder} does not exist — give a run's log_dir or a campaign folder")
    raise RetrainError(f"{folder} is neither a run folder (it has no {METRICS_FILE}) nor a campaign folder (no "
                       f"{MANIFEST_FILE}) — `retrain status {folder}` lists the runs and campaigns under it")


def run_plot(log_dir: Path, window: int = 1) -> Plot:
    rows = read_rows(log_dir / METRICS_FILE) if (log_dir / METRICS_FILE).exists() else []
    if not rows:
        raise RetrainError(f"{log_dir} has no metrics yet: {METRICS_FILE} gets its first row when the run's first step "
                           "ends — try again then")
    curves = {metric: [aggregate(log_dir.name, [series(rows, metric, window)])] for metric in METRICS}
    return Plot(title=f"run {log_dir}{_window_note(window)}", is_campaign=False, curves=curves)


def _window_note(window: int) -> str:
    return f", {window}-step mean" if window > 1 else ""


def campaign_plot(folder: Path, window: int = 1) -> Plot:
    """One curve per condition (in manifest order), averaged over the runs that have
    logged something; runs without a condition are their own."""
    campaign = read_campaign(folder)
    if campaign.problems and not campaign.runs:
        raise RetrainError(f"campaign {folder}: " + "; ".join(campaign.problems))
    by_condition: dict[str, list[list[dict[str, object]]]] = {}
    for run in campaign.runs:
        metrics = run.path / METRICS_FILE
        rows = read_rows(metrics) if metrics.exists() else []
        if rows:
            by_condition.setdefault(run.condition or run.name, []).append(rows)
    if not by_condition:
        raise RetrainError(f"campaign {folder} has no metrics yet: none of its {len(campaign.runs)} runs has finished "
                           "a step — try again once one has (`retrain status` shows their progress)")
    curves = {metric: [aggregate(condition, [series(rows, metric, window) for rows in runs])
                       for condition, runs in by_condition.items()] for metric in METRICS}
    runs = sum(len(runs) for runs in by_condition.values())
    return Plot(title=f"campaign {campaign.name}: {len(by_condition)} conditions, {runs} runs, mean over seeds, "
                      f"band min–max{_window_note(window)}", is_campaign=True, curves=curves)


def series(rows: list[dict[str, object]], metric: str, window: int = 1) -> dict[int, float]:
    """step -> value of ``metric``, or with ``window`` > 1 its mean over the last ``window``
    values up to that step (fewer at the start); rows without a number for it (null) are
    left out."""
    values: dict[int, float] = {}
    for row in rows:
        step, value = row.get("step"), row.get(metric)
        if isinstance(step, int) and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[step] = float(value)
    if window == 1:
        return values
    steps, raw = list(values), list(values.values())
    sums = [0.0, *itertools.accumulate(raw)]
    return {step: (sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1) for i, step in enumerate(steps)}


def aggregate(label: str, runs: list[dict[int, float]]) -> Curve:
    """The mean, lowest and highest value over ``runs`` at every step any of them has."""
    steps = sorted(set().union(*runs))
    mean, low, high, counts = [], [], [], []
    for step in steps:
        values = [run[step] for run in runs if step in run]
        mean.append(sum(values) / len(values))
        low.append(min(values))
        high.append(max(values))
        counts.append(len(values))
    return Curve(label, steps, mean, low, high, counts, seeds=len(runs))


def sparkline(values: list[float], low: float, high: float, width: int = SPARKLINE_WIDTH) -> str:
    """``values`` as block characters from ``low`` (▁) to ``high`` (█); more values than
    ``width`` are averaged in equal buckets. All one value (``high == low``) is ▁."""
    if len(values) > width:
        buckets = [values[index * len(values) // width:(index + 1) * len(values) // width] for index in range(width)]
        values = [sum(bucket) / len(bucket) for bucket in buckets]
    if high <= low:
        return SPARKS[0] * len(values)
    top = len(SPARKS) - 1
    return "".join(SPARKS[min(top, max(0, int((value - low) / (high - low) * top + 0.5)))] for value in values)


def sparkline_text(plot: Plot) -> str:
    """Per metric, one line per curve: its sparkline (one scale per metric, shared by all
    curves), then the first, last and best values."""
    lines = [plot.title]
    for metric in METRICS:
        curves = [curve for curve in plot.curves[metric] if curve.steps]
        if not curves:
            lines.append(f"{metric}: not logged")
            continue
        low = min(min(curve.mean) for curve in curves)
        high = max(max(curve.mean) for curve in curves)
        lines.append(f"{metric} (scale {low:.3f} ▁ to {high:.3f} █)")
        label_width = max(len(_label(curve, plot.is_campaign)) for curve in curves)
        for curve in curves:
            lines.append(f"  {_label(curve, plot.is_campaign).ljust(label_width)}  "
                         f"{sparkline(curve.mean, low, high)}  {_values(curve)}")
    return "\n".join(lines) + "\n"


def _label(curve: Curve, is_campaign: bool) -> str:
    if not is_campaign:
        return curve.label
    return f"{curve.label} ({curve.seeds} seed{'s' if curve.seeds != 1 else ''})"


def _values(curve: Curve) -> str:
    best = max(range(len(curve.mean)), key=lambda index: curve.mean[index])
    text = (f"steps {curve.steps[0]}-{curve.steps[-1]}  first {curve.mean[0]:.3f}  last {curve.mean[-1]:.3f}  "
            f"best {curve.mean[best]:.3f} (step {curve.steps[best]})")
    if curve.seeds > 1:
        text += (f"  last min–max {curve.low[-1]:.3f}–{curve.high[-1]:.3f} "
                 f"({curve.counts[-1]} of {curve.seeds} seeds)")
    return text


def write_png(plot: Plot, output: Path) -> None:
    """One panel per metric, drawn with matplotlib's Agg canvas (no display, no pyplot
    state) and written through a temporary file, so a reader never sees half a PNG."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise RetrainError(f"plot -o needs matplotlib, which cannot be imported ({exc}) — pip install "
                           "'retrain[plot]' (matplotlib), or leave out -o for sparklines in the terminal") from exc
    figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    for axes, metric in zip(figure.subplots(1, len(METRICS)), METRICS):
        # Short curves show their points; all curves of a panel alike, so none looks different.
        marker = "." if max(len(curve.steps) for curve in plot.curves[metric]) <= 50 else None
        for curve in plot.curves[metric]:
            (line,) = axes.plot(curve.steps, curve.mean, marker=marker, label=_label(curve, plot.is_campaign))
            if curve.seeds > 1:
                axes.fill_between(curve.steps, curve.low, curve.high, color=line.get_color(), alpha=0.2, linewidth=0)
        axes.set_xlabel("step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric == "correct_rate":
            axes.set_ylim(-0.02, 1.02)  # a fraction: the whole range, so runs compare at a glance
        axes.set_ylabel(AXIS_LABELS[metric])
        axes.grid(alpha=0.3)
        if plot.is_campaign:
            axes.legend(fontsize="small")
    figure.suptitle(plot.title, fontsize="medium")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_atomic(output, buffer.getvalue())
